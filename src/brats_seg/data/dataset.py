"""Load one split of the slice stage's output into memory as arrays."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.errors import DataError
from brats_seg.io.shards import read_shard


@dataclasses.dataclass(frozen=True)
class SliceSet:
    """``images`` ``[N, C, H, W]`` float16, ``labels`` ``[N, H, W]`` uint8, ``case_ids`` ``[N]``, ``z`` ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    z: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def read_index(slices_dir: str | Path) -> pd.DataFrame:
    path = Path(slices_dir) / "index.parquet"
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the slice stage first (dvc repro slice).")
    return pd.read_parquet(path)


def index_digest(index: pd.DataFrame) -> str:
    """Content digest of the slice index (order-independent): identifies the data a model saw."""
    rows = index.sort_values(["case_id", "z"]).to_csv(index=False).encode()
    return hashlib.sha256(rows).hexdigest()


def load_split(slices_dir: str | Path, split: str, index: pd.DataFrame | None = None) -> SliceSet:
    """Every slice of ``split``, ordered by case and z. Raises DataError when the split has none."""
    index = read_index(slices_dir) if index is None else index
    rows = index[index["split"] == split].sort_values(["case_id", "z"])
    if rows.empty:
        raise DataError(f"the {split} split has no slices in {slices_dir}; add cases or change slice.split.")
    images, labels = [], []
    for shard, group in rows.groupby("shard", sort=False):
        data = read_shard(Path(slices_dir) / shard)
        rows_in_shard = group["row"].to_numpy(dtype=np.int64)
        images.append(data["images"][rows_in_shard])
        labels.append(data["labels"][rows_in_shard])
    return SliceSet(np.concatenate(images), np.concatenate(labels), rows["case_id"].to_numpy(),
                    rows["z"].to_numpy())
