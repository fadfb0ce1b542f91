from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from brats_seg.errors import DataError
from brats_seg.io.archives import extract_archive


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_tar_and_zip_extract_regular_files(tmp_path):
    _tar(tmp_path / "a.tar.gz", [("top/case/x.txt", b"hello", "file")])
    out = extract_archive(tmp_path / "a.tar.gz", tmp_path / "out")
    assert (out / "top" / "case" / "x.txt").read_bytes() == b"hello"
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("case/y.txt", b"world")
    assert (extract_archive(tmp_path / "b.zip", tmp_path / "out2") / "case" / "y.txt").read_bytes() == b"world"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_members_outside_the_target_are_refused(tmp_path, name):
    _tar(tmp_path / "bad.tar.gz", [("fine.txt", b"1", "file"), (name, b"2", "file")])
    with pytest.raises(DataError, match="outside the target folder"):
        extract_archive(tmp_path / "bad.tar.gz", tmp_path / "target" / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "target" / "escape.txt").exists()
    assert not (tmp_path / "target" / "out").exists()


def test_zip_slip_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../../escape.txt", b"x")
    with pytest.raises(DataError, match="outside the target folder"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out")


def test_links_are_refused(tmp_path):
    _tar(tmp_path / "link.tar.gz", [("passwd", b"", "symlink")])
    with pytest.raises(DataError, match="link or special file"):
        extract_archive(tmp_path / "link.tar.gz", tmp_path / "out")


def test_not_an_archive_is_one_sentence(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        extract_archive(tmp_path / "x.tar", tmp_path / "out")
