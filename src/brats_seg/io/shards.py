"""Slice shards (.npz): the only module that reads or writes them.

A shard holds ``images`` ``[N, C, H, W]`` float16 (z-scored), ``labels`` ``[N, H, W]`` uint8 (original
BraTS labels) and ``z`` ``[N]`` int16 (axial index in the canonical volume). Shards are written to a
hidden temporary file, flushed to disk and renamed, so a reader never sees a half-written shard under its
final name; a shard that fails to load raises :class:`ShardError`.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from brats_seg.errors import DataError
from brats_seg.io.atomic import atomic_path

SHARD_KEYS = ("images", "labels", "z")


class ShardError(DataError):
    """A shard file is missing, truncated or does not follow the shard contract (a DataError: a stage says its
    sentence and exits 2, never a traceback)."""


def write_shard(path: str | Path, images: np.ndarray, labels: np.ndarray, z: np.ndarray) -> Path:
    """Atomically write one shard. Shapes: images [N,C,H,W], labels [N,H,W], z [N]; stored as float16, uint8 and
    int16 in C order whatever the inputs' layout (:class:`ShardRows` reads rows as contiguous runs of bytes)."""
    path = Path(path)
    if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]) or len(z) != len(images):
        raise ValueError(f"shard shapes disagree: images {images.shape}, labels {labels.shape}, z {len(z)}")
    arrays = {"images": np.ascontiguousarray(images, dtype=np.float16),
              "labels": np.ascontiguousarray(labels, dtype=np.uint8),
              "z": np.ascontiguousarray(z, dtype=np.int16)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
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


class ShardRows:
    """Rows of one shard read straight from the file, without loading the shard.

    Shards are uncompressed .npz files, so each array's bytes lie contiguously in the file; the offsets are
    found once from the zip directory and the .npy headers, then rows are read with ``os.pread`` (no memory
    map: pages read this way sit in the OS page cache, not in the process's resident memory). Safe to use
    from several threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.arrays = _layout(self.path)
        missing = [k for k in SHARD_KEYS if k not in self.arrays]
        if missing:
            raise ShardError(f"shard {self.path} lacks {', '.join(missing)}; rerun the slice stage.")
        self.rows = self.arrays["labels"][1][0]

    def read(self, key: str, rows: np.ndarray, out: np.ndarray) -> None:
        """Read ``rows`` (ascending runs are read in one call each) of array ``key`` into ``out`` [len(rows), ...]."""
        offset, shape, dtype = self.arrays[key]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(rows):  # a run of consecutive rows is one read
                end = start + 1
                while end < len(rows) and rows[end] == rows[end - 1] + 1:
                    end += 1
                view = memoryview(out[start:end]).cast("B")
                got = os.preadv(fd, [view], offset + int(rows[start]) * row_bytes)
                if got != len(view):
                    raise ShardError(f"shard {self.path} is truncated; rerun the slice stage.")
                start = end
        finally:
            os.close(fd)


def _layout(path: Path) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
    """key -> (byte offset of the array's data in the file, shape, dtype), for a shard written by write_shard."""
    arrays = {}
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
            size = os.fstat(fh.fileno()).st_size
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ShardError(f"shard {path} is compressed and cannot be read row by row; rerun the "
                                     f"slice stage.")
                fh.seek(info.header_offset)
                local = fh.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ShardError(f"shard {path} is damaged (no zip entry at {info.header_offset}); rerun "
                                     f"the slice stage.")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                fh.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ShardError(f"shard {path} uses .npy format {version}, which brats-seg never writes; "
                                     f"rerun the slice stage.")
                shape, fortran, dtype = read_header(fh)
                if fortran or dtype.hasobject:
                    raise ShardError(f"shard {path} holds an array laid out as brats-seg never writes; rerun "
                                     f"the slice stage.")
                offset = fh.tell()
                if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > size:
                    raise ShardError(f"shard {path} is truncated; rerun the slice stage.")
                arrays[info.filename.removesuffix(".npy")] = (offset, tuple(shape), dtype)
    except (OSError, ValueError, EOFError, struct.error, zipfile.BadZipFile) as exc:
        raise ShardError(f"shard {path} is unreadable ({exc}); rerun the slice stage.") from None
    return arrays
