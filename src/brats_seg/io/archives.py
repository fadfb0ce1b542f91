"""Archive extraction (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) that refuses unsafe members.

A member whose path is absolute, climbs out with ``..``, or is a link, device or FIFO makes the whole
archive refused before anything is written: a data archive never needs them, and extracting around them
would silently lose data.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from brats_seg.errors import DataError
from brats_seg.progress import progress

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` into ``dest`` (created, must not exist); returns ``dest``.

    Extraction goes to a hidden sibling folder that is renamed when complete, so an interrupted
    extraction never looks finished.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist; check the path.")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        else:
            raise DataError(f"{archive} is neither a zip nor a tar archive; pass a folder or one of "
                            f"{', '.join(ARCHIVE_SUFFIXES)}.")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def _check_name(archive: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(f"archive {archive.name} has a member that would land outside the target folder "
                        f"({name!r}); refusing to extract it. Repack the archive with relative paths.")
    return path


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"archive {archive.name} contains a link ({info.filename!r}); refusing to "
                                f"extract it. Repack the archive without links.")
        for info in progress(infos, desc=f"extract {archive.name}", unit="file"):
            target = dest / _check_name(archive, info.filename)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for member in members:
            _check_name(archive, member.name)
            if not (member.isfile() or member.isdir()):
                raise DataError(f"archive {archive.name} contains a link or special file ({member.name!r}); "
                                f"refusing to extract it. Repack the archive with regular files only.")
        for member in progress(members, desc=f"extract {archive.name}", unit="file"):
            target = dest / _check_name(archive, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            assert src is not None  # regular file, checked above
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
