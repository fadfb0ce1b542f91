"""Score any model on a workspace's test patients, from the raw cases, with the model's own preprocessing.

The promotion gate uses this to compare a champion with a challenger that was tested on another split: the
champion is scored on the challenger's test patients exactly as the evaluate stage scores a model (the same
brain slices, :func:`~brats_seg.data.preprocess.preprocess` with the slice parameters stored with the
model, the prediction mapped back to each case's own grid, :func:`~brats_seg.evaluation.evaluate.score_case`), so that
for a model whose slice parameters match the workspace's it reproduces the evaluate stage's numbers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brats_seg.data.layouts import canonical_files
from brats_seg.data.preprocess import preprocess
from brats_seg.errors import DataError
from brats_seg.evaluation.evaluate import score_case
from brats_seg.inference.bundle import ModelBundle
from brats_seg.inference.segment import segment_case
from brats_seg.io.nifti import read_nifti
from brats_seg.io.tables import read_json


@dataclasses.dataclass(frozen=True)
class WorkspaceSplit:
    """A split as the workspace's slice stage wrote it: its digest (case ids), its content digest (images and
    labels, None in slices written before it was recorded) and its sliced cases (case_id, patient_id,
    image_sha256)."""

    digest: str
    content: str | None
    cases: pd.DataFrame


def workspace_split(slices_dir: str | Path, split: str = "test") -> WorkspaceSplit:
    """The workspace's ``split``: the cases that have slices, the ones the evaluate stage scores."""
    meta, table = Path(slices_dir) / "meta.json", Path(slices_dir) / "cases.parquet"
    if not meta.is_file() or not table.is_file():
        raise DataError(f"the workspace has no slices ({meta} or {table} is missing); run `dvc repro slice` "
                        f"(or `dvc checkout`) in the workspace that produced the model, then retry.")
    cases = pd.read_parquet(table)
    cases = cases[(cases["split"] == split) & (cases["n_slices"] > 0)]
    if "image_sha256" not in cases:
        cases = cases.assign(image_sha256="")
    written = read_json(meta)
    return WorkspaceSplit(written["split_digest"], written.get("content_digests", {}).get(split),
                          cases[["case_id", "patient_id", "image_sha256"]].reset_index(drop=True))


def score_model(bundle: ModelBundle, raw_dir: str | Path, case_ids: list[str], lesion_config: str = "gli",
                batch_size: int | None = None) -> pd.DataFrame:
    """One row per case and region of ``bundle.regions`` (the columns of :func:`score_case`)."""
    rows = []
    for case_id in tqdm(case_ids, desc="re-score", unit="case", leave=False):
        rows.extend(score_raw_case(bundle, Path(raw_dir) / case_id, lesion_config, batch_size))
    return pd.DataFrame(rows)


def score_raw_case(bundle: ModelBundle, case_dir: Path, lesion_config: str = "gli",
                   batch_size: int | None = None) -> list[dict]:
    """Preprocess one canonical case with the model's slice parameters and segment its brain slices by the one
    predict step (:func:`~brats_seg.inference.segment.segment_case`, the model's own post-processing included);
    score every
    region against its label map."""
    files = canonical_files(case_dir)
    spec = bundle.spec
    missing = [kind for kind in (*spec.modalities, "seg") if files.get(kind) is None]
    if missing:
        raise DataError(f"case {case_dir.name} has no {', '.join(missing)} file in {case_dir}; the workspace's raw "
                        f"data does not match its slices: run `dvc checkout` (or `dvc repro download`), then retry.")
    volumes, affine = [], None
    for modality in spec.modalities:
        data, meta = read_nifti(files[modality])
        volumes.append(data)
        affine = meta.affine
    pre = preprocess(spec, np.stack(volumes), affine)
    keep = pre.brain_pixels > 0  # every brain slice, as the slice stage keeps for val and test cases
    seg, seg_meta = read_nifti(files["seg"])
    masks = segment_case(bundle, pre.images[keep], pre.z[keep], pre.geometry, seg_meta.spacing, batch_size).masks
    return [{k: v for k, v in row.items() if k != "official"}
            for row in score_case(case_dir.name, masks, seg, seg_meta.spacing, lesion_config)]
