"""Atomic file writes: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` to write to; when the block succeeds the file is
    flushed to disk and renamed over ``path``, otherwise it is removed. ``suffix`` keeps a format's file
    extension on the temporary name (nibabel chooses .nii or .nii.gz by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        from brats_seg.errors import UserError, disk_full_error, is_disk_full

        if isinstance(exc, UserError) or not is_disk_full(exc):
            raise
        tmp.unlink(missing_ok=True)
        raise disk_full_error(path.parent, path.name) from None
    finally:
        tmp.unlink(missing_ok=True)


# A folder that a stage replaces whole (base.raw_dir, base.slices_dir, ...) is named by the user, who may name one
# of their own by mistake. The project writes this marker into every such folder it makes, and removes an existing
# non-empty folder only when the marker is there. Its content is constant: it is part of DVC-tracked outputs.
OUTPUT_MARKER = ".brats-seg-output"
_MARKER_TEXT = "brats-seg wrote this folder and replaces it whole on the next run.\n"


def mark_output_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and write the marker that lets :func:`remove_output_dir` replace it later."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / OUTPUT_MARKER).write_text(_MARKER_TEXT)
    return path


def claim_output_dir(path: str | Path) -> Path:
    """Create ``path`` if needed; mark it (:func:`mark_output_dir`) when it is new, empty or marked already, so
    that a folder of the user's named as an output, which the stage writes into, never becomes removable."""
    path = Path(path)
    if is_removable(path):
        return mark_output_dir(path)
    return path


def is_removable(path: str | Path) -> bool:
    """True when ``path`` is absent, an empty folder, or a folder carrying the project's marker."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return False
    return not path.exists() or (path / OUTPUT_MARKER).is_file() or not any(path.iterdir())


def check_removable(path: str | Path, key: str) -> None:
    """Raise UserError unless ``path`` (the value of params key ``key``) may be replaced by the stage."""
    from brats_seg.errors import UserError

    if not is_removable(path):
        what = "is a file or link" if Path(path).is_symlink() or not Path(path).is_dir() else \
            "is an existing folder that brats-seg did not create"
        raise UserError(f"{key} {path} {what}, and the stage replaces that path whole; nothing was deleted: point "
                        f"{key} at a new or empty folder (or delete {path} yourself if it is an old output).")


def remove_output_dir(path: str | Path, key: str) -> None:
    """Delete the folder ``path`` if it exists, which only a folder the project made (or an empty one) may be."""
    import shutil

    check_removable(path, key)
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
