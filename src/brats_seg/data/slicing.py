"""The slice stage: validated cases -> axial slices in .npz shards, an index and per-case geometry.

Outputs under ``slices_dir``: ``shards/<case>.npz`` (one shard per case, written atomically),
``index.parquet`` (one row per slice: case_id, patient_id, z, shard, row, split, tumour_pixels, brain_pixels),
``cases.parquet`` (patient, split and geometry to map predictions back) and ``meta.json`` (parameters, counts
and the split's digest). Split by patient: a hash of patient id and seed (:func:`split_cases`).
Training-split slices without tumour are kept at ``keep_empty_fraction``; validation and test cases keep
every brain slice so that they can be evaluated per patient in the original grid.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.data.inspect import label_digest
from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import canonical_files
from brats_seg.data.preprocess import preprocess
from brats_seg.data.spec import SliceParams
from brats_seg.errors import DataError
from brats_seg.io.atomic import mark_output_dir, remove_output_dir
from brats_seg.io.nifti import read_volume
from brats_seg.io.shards import write_shard
from brats_seg.io.tables import write_json, write_parquet
from brats_seg.orchestration.executors import LOCAL, Executor, run_parallel

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_BRATS2023_CASE = re.compile(r"^BraTS-(?P<kind>[A-Za-z]+)-(?P<number>\d+)-\d+$", re.IGNORECASE)


def patient_id(case_id: str) -> str:
    """The patient a case belongs to: the BraTS 2023 ``BraTS-GLI-00001-000`` (patient 00001, time point 000)
    gives ``BraTS-GLI-00001``, so that time points of one patient share a split; any other id is its own.

    BraTS 2023 ids match in any letter case, as layouts are detected (:mod:`brats_seg.data.layouts`), and give the
    patient in the challenge's spelling: ``brats-gli-00001-001`` is patient ``BraTS-GLI-00001`` too.
    """
    match = _BRATS2023_CASE.match(case_id)
    return f"BraTS-{match['kind'].upper()}-{match['number']}" if match else case_id


def patient_position(patient: str, seed: int) -> float:
    """Where a patient falls in [0, 1): the first 8 bytes of sha256(f"{seed}:{patient}") over 2**64."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_patients(patients: list[str], fractions: tuple[float, float, float], seed: int, folds: int = 0,
                   fold: int = 0) -> dict[str, str]:
    """Assign each patient to train / val / test by its hash position alone (see :func:`split_cases`)."""
    if folds:
        return {p: _fold_split(int(patient_position(p, seed) * folds), folds, fold) for p in sorted(set(patients))}
    bounds = _split_bounds(fractions)
    return {p: _split_at(patient_position(p, seed), bounds) for p in sorted(set(patients))}


def _fold_split(k: int, folds: int, fold: int) -> str:
    """Fold ``k`` of ``folds`` when fold ``fold`` is tested: test, the next fold validates, the others train."""
    return "test" if k == fold else "val" if k == (fold + 1) % folds else "train"


def split_cases(case_ids: list[str], fractions: tuple[float, float, float], seed: int, folds: int = 0,
                fold: int = 0) -> dict[str, str]:
    """Assign each case to train / val / test by its patient: a pure function of patient id and seed.

    The rule: a patient's position ``u`` = sha256(f"{seed}:{patient}") mapped to [0, 1) falls in one of the
    intervals ``[0, f_train)``, ``[f_train, f_train + f_val)``, ``[f_train + f_val, 1)``, and that is its split.
    Nothing else enters it, so adding, removing or quarantining cases never moves any patient, and time points
    of one patient (:func:`patient_id`) share a split. Each split's count is a binomial draw around
    ``fraction x n`` (about +-5 patients of 200 at 0.15).

    No patient is ever moved to fill a split: when a split with a non-zero fraction draws nobody (the chance is
    ``(1 - f)**n``, under 1% from 30 patients on at f = 0.15), this raises a DataError that names the empty
    split and a few values of ``base.seed`` under which this cohort fills every split.

    With ``folds`` (k-fold cross-validation, ``slice.folds``) the same position picks a fold, ``floor(u x folds)``:
    fold ``fold`` is the test split, the next one (cyclically) the validation split, the rest train; over the folds
    every patient is tested exactly once, and a patient's fold never changes as cases come and go.
    """
    patients = {c: patient_id(c) for c in case_ids}
    by_patient = split_patients(list(patients.values()), fractions, seed, folds, fold)
    _require_every_split(by_patient, fractions, seed, folds)
    return {c: by_patient[p] for c, p in sorted(patients.items())}


def fitting_seeds(patients: list[str], fractions: tuple[float, float, float], count: int = 3,
                  tries: int = 1000, folds: int = 0) -> list[int]:
    """The first ``count`` seeds below ``tries`` under which every split with a non-zero fraction (with ``folds``:
    every fold) gets a patient of ``patients``; fewer (none) when the cohort has fewer patients than that or no
    seed fits."""
    wanted = set(SPLITS) if folds else {s for s, f in zip(SPLITS, fractions) if f > 0}
    found: list[int] = []
    if len(set(patients)) < max(len(wanted), folds):
        return found
    for seed in range(tries):
        taken = {int(patient_position(p, seed) * folds) for p in patients} if folds else \
            set(split_patients(patients, fractions, seed).values())
        if (len(taken) == folds) if folds else wanted <= taken:
            found.append(seed)
            if len(found) == count:
                break
    return found


def _require_every_split(assigned: dict[str, str], fractions: tuple[float, float, float], seed: int,
                         folds: int = 0) -> None:
    """Refuse a split in which a split with a non-zero fraction (with ``folds``: any fold) holds nobody, in one
    sentence."""
    if folds:
        _require_every_fold(list(assigned), seed, folds)
    empty = [s for s, f in zip(SPLITS, fractions) if f > 0 and s not in assigned.values()]
    if not empty:
        return
    seeds = fitting_seeds(list(assigned), fractions)
    names = " and ".join(empty)
    advice = "add cases (training needs a val patient, evaluate a test patient)"
    if seeds:
        listed = f"{', '.join(map(str, seeds[:-1]))} or {seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
        advice = f"set base.seed to {listed} (under which every split gets a patient of this cohort) or add cases"
    raise DataError(f"the {names} split{'s' if len(empty) > 1 else ''} of slice.split {list(fractions)} drew none "
                    f"of the {len(assigned)} patient(s) under base.seed {seed} (a patient's split is its hash "
                    f"alone and nobody is moved to fill one); {advice}.")


def _require_every_fold(patients: list[str], seed: int, folds: int) -> None:
    """Refuse folds of which one holds nobody (any fold is tested in turn), in one sentence."""
    empty = sorted(set(range(folds)) - {int(patient_position(p, seed) * folds) for p in patients})
    if not empty:
        return
    seeds = fitting_seeds(patients, (1.0, 0.0, 0.0), folds=folds)
    advice = (f"set base.seed to {' or '.join(map(str, seeds))} (under which every fold gets a patient of this "
              f"cohort), lower slice.folds, or add cases") if seeds else "lower slice.folds or add cases"
    raise DataError(f"fold{'s' if len(empty) > 1 else ''} {', '.join(map(str, empty))} of slice.folds={folds} drew "
                    f"none of the {len(patients)} patient(s) under base.seed {seed} (a patient's fold is its hash "
                    f"alone); {advice}.")


def _split_bounds(fractions: tuple[float, float, float]) -> list[tuple[float, float]]:
    cuts = [0.0, fractions[0], fractions[0] + fractions[1], 1.0]
    return [(cuts[i], cuts[i + 1]) for i in range(3)]


def _split_at(position: float, bounds: list[tuple[float, float]]) -> str:
    for split, (_, hi) in zip(SPLITS[:-1], bounds):
        if position < hi:
            return split
    return SPLITS[-1]


def split_digest(splits: dict[str, str]) -> str:
    """SHA-256 of the sorted ``case_id split`` lines: equal digests mean the same patient split."""
    text = "\n".join(f"{c} {s}" for c, s in sorted(splits.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def cohort_origin(raw_dir: str | Path) -> dict[str, str]:
    """Where the raw cases came from (``source``: synthetic, local, url, kaggle) and the label convention most of
    them were delivered in (``label_convention``: brats2020, brats2023, msd), from the download stage's
    sources.json; ``unknown`` and brats2020 without one. Carried to the model, so that a mask can say what its
    model learnt from and a label map comes back in the convention its users know."""
    try:
        record = json.loads((Path(raw_dir) / "sources.json").read_text())
        conventions = [c.get("convention") for c in (record.get("cases") or {}).values() if isinstance(c, dict)]
        known = [c for c in conventions if c in ("brats2020", "brats2023", "msd")]
        common = max(sorted(set(known)), key=known.count) if known else "brats2020"
        return {"source": str(record.get("source", "unknown")), "label_convention": common}
    except (OSError, ValueError, AttributeError):
        return {"source": "unknown", "label_convention": "brats2020"}


def content_digest(cases: pd.DataFrame) -> str:
    """SHA-256 of what a split's cases hold: each case id with the digests of its decoded images and labels
    (columns case_id, image_sha256, label_sha256), in case order. Equal split digests say the same ids; equal
    content digests say the same images and labels under them."""
    rows = cases.sort_values("case_id")[["case_id", "image_sha256", "label_sha256"]].astype(str)
    text = "".join(f"{c}:{i}:{lab}\n" for c, i, lab in rows.itertuples(index=False))
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
        data, meta = read_volume(files[m])
        vols.append(data)
        affine = meta.affine
    seg, _ = read_volume(files["seg"])
    pre = preprocess(params.spec, np.stack(vols), affine, seg=seg.astype(np.uint8))
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
            "affine": np.asarray(affine).ravel().tolist(), "label_sha256": label_digest(seg),
            **pre.geometry.to_record()}
    return {"index": index, "case": case}


def run_slice(params: SliceParams, raw_dir: str | Path, manifest: pd.DataFrame, out_dir: str | Path,
              seed: int, executor: Executor = LOCAL) -> dict:
    """Slice every ``ok`` case of ``manifest`` with ``executor``; writes shards, index.parquet, cases.parquet and
    meta.json."""
    out_dir = Path(out_dir)
    if manifest.empty:
        raise DataError("no validated cases to slice; every case was quarantined or the cohort is empty "
                        "(see reports/validation/quarantine.csv).")
    patients = {c: patient_id(c) for c in manifest["case_id"]}
    splits = split_cases(list(patients), params.split, seed, params.folds, params.fold)
    remove_output_dir(out_dir, "base.slices_dir")
    mark_output_dir(out_dir)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True)
    jobs = [_Job(Path(raw_dir) / c, splits[c]) for c in sorted(splits)]
    work = functools.partial(slice_case, params=params, seed=seed, shard_dir=shard_dir)
    results = run_parallel(work, jobs, params.workers, desc="slice cases", executor=executor)
    index = pd.concat([pd.DataFrame(r["index"]) for r in results], ignore_index=True).astype(
        {"z": "int64", "row": "int64", "tumour_pixels": "int64", "brain_pixels": "int64"})  # empty cases: object
    cases = pd.DataFrame([r["case"] for r in results])
    for table in (index, cases):
        table.insert(1, "patient_id", table["case_id"].map(patients))
    images = dict(zip(manifest["case_id"], manifest.get("image_sha256", pd.Series("", index=manifest.index))))
    cases.insert(3, "image_sha256", cases["case_id"].map(images))  # how a renamed copy of a case is recognised
    write_parquet(index, out_dir / "index.parquet")
    write_parquet(cases, out_dir / "cases.parquet")
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k != "workers"}  # outputs don't depend on it
    meta = {"params": settings, "seed": seed, **cohort_origin(raw_dir), "split_digest": split_digest(splits),
            "content_digests": {s: content_digest(cases[cases["split"] == s]) for s in SPLITS},
            "cases": {s: int((cases["split"] == s).sum()) for s in SPLITS},
            "patients": {s: int(cases.loc[cases["split"] == s, "patient_id"].nunique()) for s in SPLITS},
            "slices": {s: int((index["split"] == s).sum()) for s in SPLITS},
            "tumour_slices": {s: int(((index["split"] == s) & (index["tumour_pixels"] > 0)).sum()) for s in SPLITS}}
    write_json(out_dir / "meta.json", meta)
    log.info("slice: %s", json.dumps({"cases": meta["cases"], "slices": meta["slices"]}))
    return meta
