"""The evaluate stage's pictures: the best, median and worst test case, each at the axial slice of the original
grid with the most reference tumour, reference and prediction as label maps and the errors of every region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import canonical_files
from brats_seg.data.preprocess import CaseGeometry
from brats_seg.inference import ModelBundle
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import read_shard
from brats_seg.plots import plot_case_overlay
from brats_seg.segment import segment_case


def pick_cases(frame: pd.DataFrame, metric: str = "dice") -> dict[str, str]:
    """The worst, median and best case by ``metric`` averaged over the model's regions, among the cases with
    tumour (all cases when none has); ties broken by case id."""
    wt = frame[frame["region"] == "wt"].set_index("case_id")
    pool = wt.index[wt["ref_voxels"] > 0] if (wt["ref_voxels"] > 0).any() else wt.index
    score = frame[frame["case_id"].isin(pool)].groupby("case_id")[metric].mean()
    ranked = score.reset_index().sort_values([metric, "case_id"]).reset_index(drop=True)
    return {"worst": ranked["case_id"].iloc[0], "median": ranked["case_id"].iloc[len(ranked) // 2],
            "best": ranked["case_id"].iloc[-1]}


def write_overlays(bundle: ModelBundle, frame: pd.DataFrame, slices_dir: str | Path, raw_dir: str | Path,
                   out_dir: str | Path) -> list[Path]:
    """PNG overlays of the worst, median and best case (:func:`pick_cases`) on the FLAIR (or first modality)
    of the case's own grid, as the post-processed prediction a user gets."""
    cases = pd.read_parquet(Path(slices_dir) / "cases.parquet").set_index("case_id")
    paths = []
    for name, case_id in pick_cases(frame).items():
        rec = {"case_id": case_id, **cases.loc[case_id].to_dict()}
        shard = read_shard(Path(slices_dir) / rec["shard"])
        files = canonical_files(Path(raw_dir) / case_id)
        seg, meta = read_nifti(files["seg"])
        masks = segment_case(bundle, shard["images"], shard["z"], CaseGeometry.from_record(rec), meta.spacing).masks
        ref = {region: region_mask(seg, region) for region in masks}
        z = int(ref["wt"].sum(axis=(0, 1)).argmax())
        image, _ = read_nifti(files["flair"] if files.get("flair") else files[bundle.slice_params["modalities"][0]])
        scores = frame[frame["case_id"] == case_id].set_index("region")["dice"]
        title = f"{name}: {case_id} z={z} " + ", ".join(f"{r.upper()} Dice {scores[r]:.3f}" for r in masks)
        paths.append(plot_case_overlay(_axial(image[:, :, z]), {r: _axial(m[:, :, z]) for r, m in ref.items()},
                                       {r: _axial(m[:, :, z]) for r, m in masks.items()}, title,
                                       Path(out_dir) / f"{name}.png"))
    return paths


def _axial(plane: np.ndarray) -> np.ndarray:
    """An axial plane ``(X, Y)`` of the stored grid as an image (rows along Y)."""
    return np.rot90(np.asarray(plane, dtype=np.float32) if plane.dtype.kind == "f" else plane)
