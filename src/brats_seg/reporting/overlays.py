"""The evaluate stage's pictures: the best, median and worst test case, each at three axial slices of its original
grid through the tumour, reference and prediction as label maps and the errors of every region, with the
patient's directions marked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import canonical_files
from brats_seg.data.preprocess import CaseGeometry
from brats_seg.inference.bundle import ModelBundle
from brats_seg.inference.segment import segment_case
from brats_seg.io.atomic import claim_output_dir
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import read_shard
from brats_seg.reporting.plots import SliceView, plot_case_overlay


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
    of the case's own grid, as the post-processed prediction a user gets: three axial slices each
    (:func:`pick_slices`), shown in the radiological convention with the patient's directions marked."""
    cases = pd.read_parquet(Path(slices_dir) / "cases.parquet").set_index("case_id")
    picked = pick_cases(frame)
    claim_output_dir(out_dir)  # brats-seg clean removes it only so
    paths = []
    for name, case_id in picked.items():
        rec = {"case_id": case_id, **cases.loc[case_id].to_dict()}
        shard = read_shard(Path(slices_dir) / rec["shard"])
        files = canonical_files(Path(raw_dir) / case_id)
        seg, meta = read_nifti(files["seg"])
        masks = segment_case(bundle, shard["images"], shard["z"], CaseGeometry.from_record(rec), meta.spacing).masks
        ref = {region: region_mask(seg, region) for region in masks}
        image, _ = read_nifti(files["flair"] if files.get("flair") else files[bundle.spec.modalities[0]])
        show, marks = axial_view(nib.aff2axcodes(meta.affine))
        views = [SliceView(show(image[:, :, z]), {r: show(m[:, :, z]) for r, m in ref.items()},
                           {r: show(m[:, :, z]) for r, m in masks.items()}, f"z={z}", marks)
                 for z in pick_slices(ref["wt"], masks["wt"])]
        rows = frame[frame["case_id"] == case_id].set_index("region")
        same = [other for other, c in picked.items() if c == case_id and other != name]
        title = (f"{name}{' (also ' + ', '.join(same) + ')' if same else ''}: {case_id}; " + ", ".join(
            f"{r.upper()} Dice {rows.loc[r, 'dice']:.3f}" for r in masks)
            + (f"; tumour {rows.loc['wt', 'ref_ml']:.1f} ml, predicted {rows.loc['wt', 'pred_ml']:.1f} ml"
               if "ref_ml" in rows else ""))
        paths.append(plot_case_overlay(views, title, Path(out_dir) / f"{name}.png"))
    return paths


def pick_slices(ref: np.ndarray, pred: np.ndarray, n: int = 3) -> list[int]:
    """``n`` distinct axial indices through the tumour: the quartiles of the reference's tumour along z (of the
    prediction's where the reference has none, of the whole volume where neither has any), so that a case shows
    its tumour's lower part, middle and upper part."""
    depth = ref.shape[2]
    profile = ref.sum(axis=(0, 1)) if ref.any() else pred.sum(axis=(0, 1)) if pred.any() else np.ones(depth)
    cumulative = np.cumsum(profile) / profile.sum()
    chosen: list[int] = []
    for q in np.linspace(0, 1, n + 2)[1:-1]:
        z = int(np.searchsorted(cumulative, q))
        while z in chosen and z + 1 < depth:  # a thin tumour: the next slice up
            z += 1
        if z not in chosen:
            chosen.append(z)
    return sorted(chosen)


OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def axial_view(codes: tuple[str | None, ...]) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[str, str, str, str]]:
    """How to show a plane ``(X, Y)`` of a grid whose axes point to ``codes`` (nibabel's ``aff2axcodes``):
    in the radiological convention (patient's right on the image's left, anterior at the top) when the plane
    is axial, else as stored; and the directions at the image's left, right, top and bottom edges."""
    a, b = codes[0], codes[1]
    if a is None or b is None:
        return _as_stored, ("", "", "", "")
    axes = {frozenset((a, OPPOSITE[a])): 0, frozenset((b, OPPOSITE[b])): 1}
    lr, ap = axes.get(frozenset("LR")), axes.get(frozenset("AP"))
    if lr is None or ap is None:
        return _as_stored, (OPPOSITE[a], a, b, OPPOSITE[b])
    flip_cols, flip_rows = codes[lr] == "R", codes[ap] == "A"

    def show(plane: np.ndarray) -> np.ndarray:
        image = np.asarray(plane).T if ap == 1 else np.asarray(plane)  # rows along anterior-posterior
        return image[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]

    return show, ("R", "L", "A", "P")


def _as_stored(plane: np.ndarray) -> np.ndarray:
    """A plane ``(X, Y)`` as an image with X along the columns and Y growing upwards."""
    return np.rot90(np.asarray(plane))
