"""The slice stage: validated cases -> axial slices in .npz shards, an index and per-case geometry.

Outputs under ``slices_dir``: ``shards/<case>.npz`` (one shard per case, written atomically),
``index.parquet`` (one row per slice: case_id, z, shard, row, split, tumour_pixels, brain_pixels),
``cases.parquet`` (split and geometry to map predictions back) and ``meta.json`` (parameters, counts and
the split's digest). Split by patient, seeded. Training-split slices without tumour are kept at
``keep_empty_fraction``; validation and test cases keep every brain slice so that they can be evaluated
per patient in the original grid.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import MODALITIES, canonical_files
from brats_seg.data.preprocess import preprocess_case
from brats_seg.errors import ConfigError, DataError
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import write_shard
from brats_seg.io.tables import write_json, write_parquet
from brats_seg.pool import run_parallel

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SliceParams:
    """params.yaml ``slice`` section."""

    size: int = 128
    modalities: tuple[str, ...] = MODALITIES
    margin: int = 4
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    keep_empty_fraction: float = 0.1
    workers: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ConfigError(f"params.yaml: slice.modalities has {unknown or 'nothing'}; use some of "
                              f"{', '.join(MODALITIES)}.")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ConfigError(f"params.yaml: slice.split must be three non-negative fractions (train, val, "
                              f"test) that sum to 1, got {list(self.split)}.")
        if self.size < 8 or not 0.0 <= self.keep_empty_fraction <= 1.0:
            raise ConfigError("params.yaml: slice.size must be at least 8 and slice.keep_empty_fraction "
                              "between 0 and 1.")


def split_cases(case_ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Assign each patient to train / val / test: a seeded permutation of the sorted ids, cut by
    ``fractions``; with three or more cases every split with a non-zero fraction gets at least one."""
    ids = sorted(case_ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n = len(ids)
    counts = [int(round(f * n)) for f in fractions[1:]]
    if n >= 3:
        counts = [max(c, 1) if f > 0 else 0 for c, f in zip(counts, fractions[1:])]
    n_val, n_test = counts
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"{n} case(s) are too few for the split {list(fractions)}; add cases or change slice.split.")
    labels = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, labels))


def split_digest(splits: dict[str, str]) -> str:
    """SHA-256 of the sorted ``case_id split`` lines: equal digests mean the same patient split."""
    text = "\n".join(f"{c} {s}" for c, s in sorted(splits.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Job:
    case_dir: Path
    split: str


def slice_case(job: _Job, params: SliceParams, seed: int, shard_dir: Path) -> dict:
    """Preprocess one case, select its slices and write its shard; returns its index rows and geometry."""
    files = canonical_files(job.case_dir)
    case_id = job.case_dir.name
    vols, affine = [], None
    for m in params.modalities:
        data, meta = read_nifti(files[m])
        vols.append(data)
        affine = meta.affine
    seg, _ = read_nifti(files["seg"])
    pre = preprocess_case(np.stack(vols), affine, params.size, params.margin, seg=seg.astype(np.uint8))
    tumour_px = region_mask(pre.labels).sum(axis=(1, 2))
    keep = pre.brain_pixels > 0
    if job.split == "train":
        rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
        keep &= (tumour_px > 0) | (rng.random(len(keep)) < params.keep_empty_fraction)
    rows = np.flatnonzero(keep)
    shard = f"shards/{case_id}.npz"
    write_shard(shard_dir.parent / shard, pre.images[rows], pre.labels[rows], pre.z[rows])
    index = {"case_id": case_id, "z": pre.z[rows].astype(int).tolist(), "shard": shard,
             "row": list(range(len(rows))), "split": job.split, "tumour_pixels": tumour_px[rows].astype(int).tolist(),
             "brain_pixels": pre.brain_pixels[rows].astype(int).tolist()}
    case = {"case_id": case_id, "split": job.split, "shard": shard, "n_slices": len(rows),
            "affine": np.asarray(affine).ravel().tolist(), **pre.geometry.to_record()}
    return {"index": index, "case": case}


def run_slice(params: SliceParams, raw_dir: str | Path, manifest: pd.DataFrame, out_dir: str | Path,
              seed: int) -> dict:
    """Slice every ``ok`` case of ``manifest``; writes shards, index.parquet, cases.parquet, meta.json."""
    out_dir = Path(out_dir)
    if manifest.empty:
        raise DataError("no validated cases to slice; every case was quarantined or the cohort is empty "
                        "(see reports/validation/quarantine.csv).")
    splits = split_cases(manifest["case_id"].tolist(), params.split, seed)
    shutil.rmtree(out_dir, ignore_errors=True)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True)
    jobs = [_Job(Path(raw_dir) / c, splits[c]) for c in sorted(splits)]
    work = functools.partial(slice_case, params=params, seed=seed, shard_dir=shard_dir)
    results = run_parallel(work, jobs, params.workers, desc="slice cases")
    index = pd.concat([pd.DataFrame(r["index"]) for r in results], ignore_index=True).astype(
        {"z": "int64", "row": "int64", "tumour_pixels": "int64", "brain_pixels": "int64"})  # empty cases: object
    cases = pd.DataFrame([r["case"] for r in results])
    write_parquet(index, out_dir / "index.parquet")
    write_parquet(cases, out_dir / "cases.parquet")
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k != "workers"}  # outputs don't depend on it
    meta = {"params": settings, "seed": seed, "split_digest": split_digest(splits),
            "cases": {s: int((cases["split"] == s).sum()) for s in SPLITS},
            "slices": {s: int((index["split"] == s).sum()) for s in SPLITS},
            "tumour_slices": {s: int(((index["split"] == s) & (index["tumour_pixels"] > 0)).sum()) for s in SPLITS}}
    write_json(out_dir / "meta.json", meta)
    log.info("slice: %s", json.dumps({"cases": meta["cases"], "slices": meta["slices"]}))
    return meta
