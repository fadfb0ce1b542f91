"""Atomic file writes: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import contextlib
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
    finally:
        tmp.unlink(missing_ok=True)
