from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile

import pytest

from brats_seg.data import source_manifest
from brats_seg.data.download import run_download
from brats_seg.data.source_manifest import check_source
from brats_seg.data.sources import DownloadParams, KaggleSource, LocalSource, SyntheticSource, UrlSource
from brats_seg.errors import DataError, DownloadError
from tests.support.cohorts import TINY_SHAPE, write_synthetic_cohort


@pytest.fixture
def hashed(monkeypatch):
    """Paths whose bytes the source check reads (the real hashing, counted)."""
    calls = []
    real = source_manifest._sha256

    def counting(path, bar, **kw):
        calls.append(path)
        return real(path, bar, **kw)

    monkeypatch.setattr(source_manifest, "_sha256", counting)
    return calls


def _check(tmp_path, params, seed=0):
    return check_source(params, tmp_path / "data" / "source.json", tmp_path / "data" / "raw",
                        tmp_path / "data" / "cache", seed)


def _local(path) -> DownloadParams:
    return DownloadParams(source="local", local=LocalSource(str(path)))


def _by_hand(folder) -> dict:
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size,
                                              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in folder.rglob("*.nii.gz") if ".hidden" not in p.parts}


def test_local_folder_manifest_is_names_sizes_and_hashes_and_unchanged_bytes_when_nothing_changed(tmp_path, hashed):
    src = tmp_path / "incoming"
    write_synthetic_cohort(src, 2)
    (src / "README.txt").write_text("notes")  # download reads only NIfTI files outside hidden folders
    write_synthetic_cohort(src / ".hidden", 1)
    first = _check(tmp_path, _local(src))
    manifest = tmp_path / "data" / "source.json"
    assert first == {"source": "local", "config": {"path": str(src)}, "content": {"files": _by_hand(src)}}
    assert len(first["content"]["files"]) == 10 and len(hashed) == 10
    text, mtime = manifest.read_bytes(), manifest.stat().st_mtime_ns
    hashed.clear()
    assert _check(tmp_path, _local(src)) == first
    assert hashed == []  # every hash came from the cache
    assert manifest.read_bytes() == text and manifest.stat().st_mtime_ns == mtime  # not even rewritten
    touched = src / "BraTS20_Synthetic_001" / "BraTS20_Synthetic_001_t1.nii.gz"
    os.utime(touched, ns=(1, 1))  # a new mtime: hashed again, same content, same manifest
    _check(tmp_path, _local(src))
    assert hashed == [touched] and manifest.read_bytes() == text


def test_local_folder_manifest_follows_added_changed_and_removed_files(tmp_path):
    src = tmp_path / "incoming"
    write_synthetic_cohort(src, 2)
    before = _check(tmp_path, _local(src))["content"]["files"]
    write_synthetic_cohort(src / "more", 3)  # adds BraTS20_Synthetic_001..003 in a subfolder
    flair = src / "BraTS20_Synthetic_002" / "BraTS20_Synthetic_002_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[::-1])
    (src / "BraTS20_Synthetic_001" / "BraTS20_Synthetic_001_t2.nii.gz").unlink()
    after = _check(tmp_path, _local(src))["content"]["files"]
    assert after == _by_hand(src)
    assert len(after.keys() - before.keys()) == 15 and before.keys() - after.keys() == {
        "BraTS20_Synthetic_001/BraTS20_Synthetic_001_t2.nii.gz"}
    key = "BraTS20_Synthetic_002/BraTS20_Synthetic_002_flair.nii.gz"
    assert after[key]["sha256"] != before[key]["sha256"] and after[key]["size"] == before[key]["size"]


def test_local_archive_manifest_is_its_size_and_hash(tmp_path):
    src = tmp_path / "incoming"
    write_synthetic_cohort(src, 1)
    archive = tmp_path / "cases.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src, arcname="cases")
    content = _check(tmp_path, _local(archive))["content"]
    assert content == {"size": archive.stat().st_size, "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}


def test_synthetic_manifest_is_the_generation_params_and_seed(tmp_path):
    params = DownloadParams(synthetic=SyntheticSource(n_cases=3, shape=TINY_SHAPE))
    first = _check(tmp_path, params, seed=1)
    assert first == {"source": "synthetic", "content": {},
                     "config": {"n_cases": 3, "shape": list(TINY_SHAPE), "tumour_free_fraction": 0.1, "seed": 1}}
    text = (tmp_path / "data" / "source.json").read_text()
    assert json.loads(text) == first and text == json.dumps(first, indent=1, sort_keys=True) + "\n"
    assert _check(tmp_path, params, seed=2)["config"]["seed"] == 2


def test_url_manifest_is_the_md5_and_the_servers_validators(tmp_path, file_server):
    file_server.files["/Task.tar"] = b"release one"
    params = DownloadParams(source="url", url=UrlSource(url=file_server.url("/Task.tar"), md5="a" * 32))
    first = _check(tmp_path, params)
    etag = f'"{hashlib.sha256(b"release one").hexdigest()[:16]}"'
    assert first["config"] == {"url": file_server.url("/Task.tar"), "md5": "a" * 32}
    assert first["content"] == {"etag": etag, "last_modified": "Mon, 01 Jan 2024 00:00:00 GMT", "content_length": "11"}
    assert [r["method"] for r in file_server.requests] == ["HEAD"]  # nothing downloaded
    text = (tmp_path / "data" / "source.json").read_bytes()
    assert _check(tmp_path, params) == first and (tmp_path / "data" / "source.json").read_bytes() == text
    file_server.files["/Task.tar"] = b"release two"
    file_server.modified["/Task.tar"] = "Mon, 01 Jul 2024 00:00:00 GMT"
    second = _check(tmp_path, params)
    assert second["content"]["etag"] != etag and second["content"]["last_modified"].startswith("Mon, 01 Jul")
    file_server.no_head.add("/Task.tar")  # a server (or a signed URL) that refuses HEAD: a GET, body unread
    assert _check(tmp_path, params) == second and file_server.requests[-1]["method"] == "GET"


def test_a_url_that_answers_404_is_one_sentence(tmp_path, file_server):
    params = DownloadParams(source="url", url=UrlSource(url=file_server.url("/gone.tar")))
    with pytest.raises(DownloadError, match=r"checking .*/gone.tar was refused with HTTP 404"):
        _check(tmp_path, params)


def test_an_unreachable_remote_keeps_the_previous_manifest_or_fails_with_one_sentence(tmp_path, file_server, caplog):
    file_server.files["/Task.tar"] = b"release one"
    params = DownloadParams(source="url", url=UrlSource(url=file_server.url("/Task.tar"), timeout_s=5))
    earlier = _check(tmp_path, params)
    manifest = tmp_path / "data" / "source.json"
    text = manifest.read_bytes()
    file_server.httpd.shutdown()
    file_server.httpd.server_close()  # offline now: connection refused
    with caplog.at_level(logging.WARNING, logger="brats_seg"):
        assert _check(tmp_path, params) == earlier
    assert manifest.read_bytes() == text
    assert "could not check the url source" in caplog.text and "keeping the previous source manifest" in caplog.text
    # a manifest of another source is no fallback, and neither is none at all
    other = DownloadParams(source="url", url=UrlSource(url=file_server.url("/Task.tar"), md5=None, timeout_s=5))
    with pytest.raises(DownloadError, match=r"could not reach the url source to check it for changes \(Connection"):
        _check(tmp_path, other)
    manifest.unlink()
    with pytest.raises(DownloadError, match="could not reach the url source"):
        _check(tmp_path, params)
    assert not manifest.exists()


@pytest.fixture
def kaggle_env(monkeypatch, file_server):
    file_server.auth = ("alice", "s3cret")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret")
    return DownloadParams(source="kaggle", kaggle=KaggleSource(dataset="owner/brats",
                                                               api_url=file_server.url("/api/v1")))


def test_kaggle_manifest_is_the_datasets_version_not_its_popularity(tmp_path, file_server, kaggle_env):
    view = {"ref": "owner/brats", "currentVersionNumber": 3, "lastUpdated": "2024-05-01T10:00:00Z",
            "totalBytes": 4200, "downloadCount": 10, "voteCount": 2}
    file_server.files["/api/v1/datasets/view/owner/brats"] = json.dumps(view).encode()
    first = _check(tmp_path, kaggle_env)
    assert first["content"] == {"version": 3, "last_updated": "2024-05-01T10:00:00Z", "bytes": 4200}
    file_server.files["/api/v1/datasets/view/owner/brats"] = json.dumps({**view, "downloadCount": 99}).encode()
    assert _check(tmp_path, kaggle_env) == first
    file_server.files["/api/v1/datasets/view/owner/brats"] = json.dumps({**view, "currentVersionNumber": 4}).encode()
    assert _check(tmp_path, kaggle_env)["content"]["version"] == 4
    assert all(r["auth"] for r in file_server.requests)


def test_kaggle_without_a_metadata_endpoint_uses_the_download_urls_validators(tmp_path, file_server, kaggle_env):
    file_server.files["/api/v1/datasets/download/owner/brats"] = b"zip bytes"
    content = _check(tmp_path, kaggle_env)["content"]
    assert content["etag"] == f'"{hashlib.sha256(b"zip bytes").hexdigest()[:16]}"' and content["content_length"] == "9"
    file_server.auth = ("alice", "wrong")
    with pytest.raises(DownloadError, match="Kaggle refused the credentials for owner/brats"):
        _check(tmp_path, kaggle_env)


def test_a_local_path_inside_the_raw_or_cache_folder_is_refused_before_anything_is_deleted(tmp_path):
    raw, cache = tmp_path / "data" / "raw", tmp_path / "data" / "cache"
    write_synthetic_cohort(raw / "mine", 1)
    with pytest.raises(DataError, match=r"lies inside base.raw_dir .* move the source cases out of it"):
        _check(tmp_path, _local(raw / "mine"))
    with pytest.raises(DataError, match=r"contains base.raw_dir"):
        _check(tmp_path, _local(tmp_path / "data"))
    extracted = cache / "extracted" / "mine"
    write_synthetic_cohort(extracted, 1)
    for path in (extracted, raw / "mine"):  # the download stage refuses too, and deletes nothing
        with pytest.raises(DataError, match="lies inside base"):
            run_download(_local(path), raw, cache, seed=0)
        assert len(list(path.rglob("*.nii.gz"))) == 5
