"""Slice shards (.npz): the only module that reads or writes them.

A shard holds ``images`` ``[N, C, H, W]`` float16 (z-scored), ``labels`` ``[N, H, W]`` uint8 (original
BraTS labels) and ``z`` ``[N]`` int16 (axial index in the canonical volume). Shards are written to a
hidden temporary file, flushed to disk and renamed, so a reader never sees a half-written shard under its
final name; a shard that fails to load raises :class:`ShardError`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from brats_seg.io.atomic import atomic_path

SHARD_KEYS = ("images", "labels", "z")


class ShardError(Exception):
    """A shard file is missing, truncated or does not follow the shard contract."""


def write_shard(path: str | Path, images: np.ndarray, labels: np.ndarray, z: np.ndarray) -> Path:
    """Atomically write one shard. Shapes: images [N,C,H,W], labels [N,H,W], z [N]."""
    path = Path(path)
    if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]) or len(z) != len(images):
        raise ValueError(f"shard shapes disagree: images {images.shape}, labels {labels.shape}, z {len(z)}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=images.astype(np.float16, copy=False), labels=labels.astype(np.uint8, copy=False),
                 z=np.asarray(z, dtype=np.int16))
    return path


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    """Read a whole shard into memory; raises ShardError when it is not a complete shard."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            missing = [k for k in SHARD_KEYS if k not in npz.files]
            if missing:
                raise ShardError(f"shard {path} lacks {', '.join(missing)}; rerun the slice stage.")
            return {k: npz[k] for k in SHARD_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ShardError(f"shard {path} is unreadable ({exc}); rerun the slice stage.") from None


def list_shards(directory: str | Path) -> list[Path]:
    """Complete shards in ``directory`` (temporary files are hidden and never listed)."""
    return sorted(p for p in Path(directory).glob("*.npz") if not p.name.startswith("."))
