"""Per-case inspection: one manifest row of facts about a canonical case folder (no judgement here)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from brats_seg.data.labels import CANONICAL_LABELS
from brats_seg.data.layouts import CANONICAL_FILES, MODALITIES, canonical_files
from brats_seg.io.nifti import Meta, read_nifti

PERCENTILES = (1, 50, 99)


def inspect_case(case_dir: str | Path) -> dict:
    """Manifest row for one case: files, grid, dtypes, an image content digest, intensity statistics and
    label counts.

    Unreadable or missing files are recorded, never raised, so that one bad case cannot stop the cohort.
    Intensity percentiles are over brain voxels (any modality non-zero) in on-disk units.
    """
    case_dir = Path(case_dir)
    row: dict = {"case_id": case_dir.name, "case_key": case_dir.name.lower()}
    files = canonical_files(case_dir)
    row["files_missing"] = ",".join(k for k in CANONICAL_FILES if files[k] is None)
    arrays: dict[str, np.ndarray] = {}
    metas: dict[str, Meta] = {}
    unreadable = []
    for kind, path in files.items():
        if path is None:
            continue
        try:
            arrays[kind], metas[kind] = read_nifti(path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a fact about the case
            unreadable.append(f"{kind} ({type(exc).__name__}: {str(exc)[:80]})")
    row["files_unreadable"] = "; ".join(unreadable)
    row["image_sha256"] = image_digest(arrays)
    row.update(_geometry(metas))
    row.update(_intensity(arrays))
    row.update(_labels(arrays.get("seg")))
    return row


def image_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the four decoded modalities (dtype, shape and voxels, in MODALITIES order), or "" when one
    is missing. Equal digests mean identical image content however the files were compressed or linked."""
    if not all(m in arrays for m in MODALITIES):
        return ""
    digest = hashlib.sha256()
    for m in MODALITIES:
        _update(digest, m, arrays[m])
    return digest.hexdigest()


def label_digest(seg: np.ndarray) -> str:
    """SHA-256 of a decoded label map (dtype, shape and voxels): equal for equal labels however stored."""
    digest = hashlib.sha256()
    _update(digest, "seg", seg)
    return digest.hexdigest()


def _update(digest: hashlib._Hash, name: str, array: np.ndarray) -> None:
    data = np.ascontiguousarray(array)
    digest.update(f"{name}:{data.dtype.str}:{data.shape};".encode())
    digest.update(memoryview(data).cast("B"))


def _geometry(metas: dict[str, Meta]) -> dict:
    if not metas:
        return {"shape": "", "same_grid": False, "spacing_min": np.nan, "spacing": "", "dtypes": "", "ndim": 0}
    ref = metas.get("flair") or next(iter(metas.values()))
    return {
        "shape": "x".join(map(str, ref.shape)),
        "shapes": "; ".join(f"{k} {'x'.join(map(str, m.shape))}" for k, m in metas.items()),
        "same_grid": all(ref.same_grid(m) for m in metas.values()) and all(len(m.shape) == 3 for m in metas.values()),
        "spacing": "x".join(f"{s:.2f}" for s in ref.spacing),
        "spacing_min": float(min(ref.spacing)),
        "dtypes": ",".join(f"{k}:{m.dtype}" for k, m in metas.items()),
        "ndim": max(len(m.shape) for m in metas.values()),
    }


def _intensity(arrays: dict[str, np.ndarray]) -> dict:
    mods = {m: arrays[m] for m in MODALITIES if m in arrays}
    # brain_voxels stays unknown (None, which no rule judges) when the modalities are not on one grid: that
    # case is quarantined for the grid alone, not also for a brain mask that could not be formed
    row: dict = {"nan_inf_voxels": 0, "all_zero_modalities": "", "brain_voxels": None}
    shapes = {a.shape for a in mods.values()}
    brain = None
    if len(shapes) == 1:
        brain = np.zeros(next(iter(shapes)), dtype=bool)
        for a in mods.values():
            brain |= np.nan_to_num(a) != 0
        row["brain_voxels"] = int(brain.sum())
    row["nan_inf_voxels"] = int(sum((~np.isfinite(a)).sum() for a in mods.values() if a.dtype.kind == "f"))
    row["all_zero_modalities"] = ",".join(m for m, a in mods.items() if not np.any(np.nan_to_num(a)))
    for m in MODALITIES:
        values = mods[m][brain] if (m in mods and brain is not None and brain.any()) else None
        finite = values[np.isfinite(values)] if values is not None else None
        for p in PERCENTILES:
            has = finite is not None and finite.size
            row[f"{m}_p{p}"] = float(np.percentile(finite, p)) if has else np.nan
    return row


def _labels(seg: np.ndarray | None) -> dict:
    row: dict = {f"voxels_label_{v}": 0 for v in sorted(CANONICAL_LABELS)}
    if seg is None:
        return {**row, "labels": "", "unexpected_labels": "", "seg_dtype": ""}
    values, counts = np.unique(seg, return_counts=True)
    odd = []
    for v, c in zip(values.tolist(), counts.tolist()):
        if np.isfinite(v) and float(v).is_integer() and int(v) in CANONICAL_LABELS:
            row[f"voxels_label_{int(v)}"] = int(c)
        else:
            odd.append(f"{v:g}")
    return {**row, "labels": ",".join(f"{v:g}" for v in values.tolist()), "unexpected_labels": ",".join(odd),
            "seg_dtype": str(seg.dtype)}
