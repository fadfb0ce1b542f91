"""Archive extraction (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) that refuses unsafe members.

A member whose path is absolute, climbs out with ``..``, or is a link, device or FIFO makes the whole
archive refused before anything is written: a data archive never needs them, and extracting around them
would silently lose data.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from brats_seg.errors import DataError
from brats_seg.io.atomic import mark_output_dir, remove_output_dir
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
    except _DAMAGED as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"archive {archive} is damaged ({type(exc).__name__}: {exc}); nothing was extracted: "
                        f"download or copy it again (delete it first if it sits in the cache).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    mark_output_dir(tmp)
    remove_output_dir(dest, "the extraction folder")
    os.replace(tmp, dest)
    return dest


_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)  # bad CRC, truncated, ...


def _refuse_clashes(archive: Path, names: list[tuple[PurePosixPath, bool]]) -> None:
    """Refuse members that cannot all be extracted: a file and a folder of one path, or one file twice."""
    files: set[PurePosixPath] = set()
    folders: set[PurePosixPath] = set()
    for path, is_dir in names:
        if not is_dir and path in files:
            raise DataError(f"archive {archive.name} holds {str(path)!r} twice; refusing to extract it (one copy "
                            f"would silently replace the other). Repack the archive with one of them.")
        (folders if is_dir else files).add(path)
        folders.update(path.parents)
    clash = sorted(files & folders)
    if clash:
        raise DataError(f"archive {archive.name} holds both a file and a folder named {str(clash[0])!r}; refusing "
                        f"to extract it. Repack the archive so that each path is one or the other.")


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
        _refuse_clashes(archive, [(_check_name(archive, i.filename), i.is_dir()) for i in infos])
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
        _refuse_clashes(archive, [(_check_name(archive, m.name), m.isdir()) for m in members])
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
