"""One split of the slice stage's output: loaded into memory as arrays (:class:`SliceSet`), or opened on
its shards and read in batches (:class:`ShardedSplit`, for training sets larger than memory). Both give the
same rows in the same order (case, then z) through the same methods (``take``, ``chunks``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.errors import DataError
from brats_seg.io.shards import ShardRows


@dataclasses.dataclass(frozen=True)
class SliceSet:
    """``images`` ``[N, C, H, W]`` float16, ``labels`` ``[N, H, W]`` uint8, ``case_ids`` ``[N]``, ``z`` ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    z: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images.shape

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[idx], self.labels[idx]

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), size):
            yield self.images[start:start + size], self.labels[start:start + size]

    def has_tumour(self) -> bool:
        return bool(np.any(self.labels))

    def subset(self, keep: np.ndarray) -> SliceSet:
        """The rows where boolean ``keep`` is true, in order (a copy)."""
        return SliceSet(self.images[keep], self.labels[keep], self.case_ids[keep], self.z[keep])


class ShardedSplit:
    """A split left on disk: only the index is held; rows are read from the shards on demand (thread-safe).

    Same rows, order and content as :func:`load_split`'s :class:`SliceSet` of the same split.
    """

    def __init__(self, slices_dir: str | Path, rows: pd.DataFrame) -> None:
        self._slices_dir, self._rows = Path(slices_dir), rows
        shards = rows["shard"].to_numpy()
        names, self._shard_of = np.unique(shards, return_inverse=True)
        self._readers = [ShardRows(Path(slices_dir) / name) for name in names]
        self._row_in_shard = rows["row"].to_numpy(dtype=np.int64)
        self._tumour = bool((rows["tumour_pixels"] > 0).any()) if "tumour_pixels" in rows else None
        self.case_ids, self.z = rows["case_id"].to_numpy(), rows["z"].to_numpy()
        shapes = {reader.arrays["images"][1][1:] for reader in self._readers}
        if len(shapes) != 1:
            raise DataError(f"the shards in {slices_dir} hold slices of different shapes ({sorted(shapes)}); "
                            f"rerun the slice stage (dvc repro slice).")
        highest = np.full(len(names), -1, dtype=np.int64)
        np.maximum.at(highest, self._shard_of, self._row_in_shard)
        for reader, row in zip(self._readers, highest):
            if row >= reader.rows:
                raise DataError(f"the index names row {row} of {reader.path}, which has {reader.rows} rows; "
                                f"rerun the slice stage (dvc repro slice).")
        self.shape = (len(rows), *shapes.pop())

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the split would take in memory (float16 images and uint8 labels)."""
        return len(self) * (2 * int(np.prod(self.shape[1:])) + int(np.prod(self.shape[2:])))

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[n, C, H, W]`` float16 and labels ``[n, H, W]`` uint8 of rows ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        images = np.empty((len(idx), *self.shape[1:]), dtype=np.float16)
        labels = np.empty((len(idx), *self.shape[2:]), dtype=np.uint8)
        shard = self._shard_of[idx]
        order = np.lexsort((self._row_in_shard[idx], shard))  # by shard, then row: consecutive rows read as one
        for group in np.split(order, np.flatnonzero(np.diff(shard[order])) + 1):
            if not len(group):
                continue
            reader, rows = self._readers[shard[group[0]]], self._row_in_shard[idx[group]]
            block_images = np.empty((len(group), *self.shape[1:]), dtype=np.float16)
            block_labels = np.empty((len(group), *self.shape[2:]), dtype=np.uint8)
            reader.read("images", rows, block_images)
            reader.read("labels", rows, block_labels)
            images[group], labels[group] = block_images, block_labels
        return images, labels

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), size):
            yield self.take(np.arange(start, min(start + size, len(self))))

    def load(self) -> SliceSet:
        """The whole split in memory."""
        return SliceSet(*self.take(np.arange(len(self))), self.case_ids, self.z)

    def subset(self, keep: np.ndarray) -> ShardedSplit:
        """The rows where boolean ``keep`` is true, in order, still read from the shards."""
        return ShardedSplit(self._slices_dir, self._rows[np.asarray(keep, dtype=bool)])

    def has_tumour(self) -> bool:
        if self._tumour is None:
            return any(np.any(labels) for _, labels in self.chunks(1024))
        return self._tumour


def read_index(slices_dir: str | Path) -> pd.DataFrame:
    path = Path(slices_dir) / "index.parquet"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the slice stage first (dvc repro slice).")
    return pd.read_parquet(path)


def index_digest(index: pd.DataFrame) -> str:
    """Content digest of the slice index (order-independent): identifies the data a model saw."""
    rows = index.sort_values(["case_id", "z"]).to_csv(index=False).encode()
    return hashlib.sha256(rows).hexdigest()


def split_rows(slices_dir: str | Path, split: str, index: pd.DataFrame | None = None) -> pd.DataFrame:
    """The index rows of ``split``, ordered by case and z. Raises DataError when the split has none."""
    index = read_index(slices_dir) if index is None else index
    rows = index[index["split"] == split].sort_values(["case_id", "z"])
    if rows.empty:
        raise empty_split_error(slices_dir, split)
    return rows


_NEEDED_BY = {"train": "training", "val": "training (it picks the best epoch on val)", "test": "evaluate"}


def empty_split_error(slices_dir: str | Path, split: str) -> DataError:
    """The one sentence for a split with no slices: when slice.split gave it a fraction of 0 (as recorded in
    ``meta.json``), say so and that the stage reading it needs one; else its cases had no brain slices."""
    meta = Path(slices_dir) / "meta.json"
    fractions = json.loads(meta.read_text()).get("params", {}).get("split") if meta.is_file() else None
    if fractions and len(fractions) == 3 and fractions[("train", "val", "test").index(split)] == 0:
        return DataError(f"slice.split {list(fractions)} gives the {split} split a fraction of 0, and "
                         f"{_NEEDED_BY[split]} needs it; give {split} a fraction above 0 and rerun the slice stage.")
    return DataError(f"the {split} split has no slices in {slices_dir} (its cases have no brain slices); add cases "
                     f"or change slice.split.")


def open_split(slices_dir: str | Path, split: str, index: pd.DataFrame | None = None) -> ShardedSplit:
    """Every slice of ``split``, left in its shards (see :class:`ShardedSplit`)."""
    return ShardedSplit(slices_dir, split_rows(slices_dir, split, index))


def load_split(slices_dir: str | Path, split: str, index: pd.DataFrame | None = None) -> SliceSet:
    """Every slice of ``split`` in memory, ordered by case and z. Raises DataError when the split has none."""
    return open_split(slices_dir, split, index).load()
