from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from brats_seg.errors import DataError, UserError
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


def _crc_damaged_zip(path):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("case/x.txt", b"A" * 1000)
    data = bytearray(path.read_bytes())
    at = data.index(b"A" * 1000) + 500
    data[at] ^= 0xFF  # the member's bytes change, its recorded CRC does not
    path.write_bytes(bytes(data))
    return path


def test_a_crc_damaged_zip_is_one_sentence_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match=r"is damaged \(BadZipFile: Bad CRC-32.*download or copy it again"):
        extract_archive(_crc_damaged_zip(tmp_path / "bad.zip"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_a_truncated_tar_is_one_sentence(tmp_path):
    _tar(tmp_path / "a.tar.gz", [("case/x.txt", bytes(range(256)) * 400, "file")])
    (tmp_path / "a.tar.gz").write_bytes((tmp_path / "a.tar.gz").read_bytes()[:-200])
    with pytest.raises(DataError, match="is damaged"):
        extract_archive(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("names", [["case/x", "case/x/y.txt"], ["case/x/y.txt", "case/x"], ["case/x", "case/x/"]])
def test_a_file_and_a_folder_of_one_name_are_refused(tmp_path, names):
    with zipfile.ZipFile(tmp_path / "clash.zip", "w") as zf:
        for name in names:
            zf.writestr(name, b"" if name.endswith("/") else b"data")
    with pytest.raises(DataError, match="both a file and a folder named 'case/x'"):
        extract_archive(tmp_path / "clash.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_twice_is_refused(tmp_path):
    _tar(tmp_path / "twice.tar.gz", [("case/x.txt", b"1", "file"), ("case/x.txt", b"2", "file")])
    with pytest.raises(DataError, match="holds 'case/x.txt' twice"):
        extract_archive(tmp_path / "twice.tar.gz", tmp_path / "out")


def test_extraction_replaces_its_own_output_but_never_a_users_folder(tmp_path):
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("case/y.txt", b"world")
    out = extract_archive(tmp_path / "b.zip", tmp_path / "out")
    assert (out / ".brats-seg-output").is_file()
    extract_archive(tmp_path / "b.zip", tmp_path / "out")  # its own output: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="did not create"):
        extract_archive(tmp_path / "b.zip", mine)
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
