from __future__ import annotations

import hashlib
import json

import pytest

from brats_seg.data.fetch import fetch_url, kaggle_credentials
from brats_seg.errors import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()  # noqa: S324


def test_download_verifies_checksum(tmp_path, file_server):
    file_server.files["/data.tar"] = PAYLOAD
    out = fetch_url(file_server.url("/data.tar"), tmp_path / "data.tar", md5=MD5, backoff_s=0)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / "data.tar.part").exists()


def test_transfer_cut_off_midway_resumes_with_range(tmp_path, file_server):
    file_server.files["/data.tar"] = PAYLOAD
    file_server.cut_first["/data.tar"] = 2  # the first two transfers break off halfway
    out = fetch_url(file_server.url("/data.tar"), tmp_path / "data.tar", md5=MD5, backoff_s=0, chunk=4096)
    assert out.read_bytes() == PAYLOAD
    ranges = [r["range"] for r in file_server.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={len(PAYLOAD) // 2}-"
    assert len(ranges) == 3  # each retry continued where the last stopped instead of starting over


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path, file_server):
    file_server.files["/data.tar"] = PAYLOAD
    (tmp_path / "data.tar.part").write_bytes(PAYLOAD[:1000])
    fetch_url(file_server.url("/data.tar"), tmp_path / "data.tar", md5=MD5, backoff_s=0)
    assert [r["range"] for r in file_server.requests] == ["bytes=1000-"]


def test_checksum_mismatch_fails_clearly_and_deletes_the_download(tmp_path, file_server):
    file_server.files["/data.tar"] = PAYLOAD
    with pytest.raises(DownloadError, match=f"checksum mismatch .* expected md5 {'0' * 32}, got {MD5}"):
        fetch_url(file_server.url("/data.tar"), tmp_path / "data.tar", md5="0" * 32, backoff_s=0)
    assert not (tmp_path / "data.tar").exists() and not (tmp_path / "data.tar.part").exists()


def test_giving_up_keeps_the_partial_file_for_later(tmp_path, file_server):
    file_server.files["/data.tar"] = PAYLOAD
    file_server.cut_first["/data.tar"] = 10
    with pytest.raises(DownloadError, match="failed after 2 attempts"):
        fetch_url(file_server.url("/data.tar"), tmp_path / "data.tar", retries=1, backoff_s=0, chunk=4096)
    assert 0 < (tmp_path / "data.tar.part").stat().st_size < len(PAYLOAD)


def test_http_errors_are_not_retried(tmp_path, file_server):
    with pytest.raises(DownloadError, match="refused with HTTP 404"):
        fetch_url(file_server.url("/missing.tar"), tmp_path / "x.tar", backoff_s=0)
    assert len(file_server.requests) == 1


def test_kaggle_credentials_missing_is_one_sentence(tmp_path):
    with pytest.raises(DownloadError, match="Kaggle credentials are missing: set KAGGLE_USERNAME and KAGGLE_KEY"):
        kaggle_credentials(environ={}, home=tmp_path)


def test_kaggle_credentials_from_env_then_file(tmp_path):
    assert kaggle_credentials({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path) == ("u", "k")
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "fu", "key": "fk"}))
    assert kaggle_credentials({}, home=tmp_path) == ("fu", "fk")
    (tmp_path / ".kaggle" / "kaggle.json").write_text("{}")
    with pytest.raises(DownloadError, match="not a valid Kaggle token"):
        kaggle_credentials({}, home=tmp_path)
