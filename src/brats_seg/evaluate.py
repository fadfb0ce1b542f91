"""Per-patient evaluation in the original grid.

Each test case's brain slices are predicted, the probabilities are mapped back to the case's own grid
(undoing resize, crop and reorientation), thresholded, and scored against the case's label map with the
metrics of :mod:`brats_seg.metrics`. Slice-level means in slice space are reported too, labelled as such:
they are what a Keras-style loop prints and are not comparable with BraTS results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.data.dataset import empty_split_error
from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import canonical_files
from brats_seg.data.preprocess import CaseGeometry, restore_volume
from brats_seg.inference import ModelBundle, predict_slices
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import read_shard
from brats_seg.metrics import METRICS, case_metrics, empty_rule, scores_from_counts, summarise
from brats_seg.plots import plot_overlay
from brats_seg.progress import progress


def evaluate_cases(bundle: ModelBundle, slices_dir: str | Path, raw_dir: str | Path, split: str = "test",
                   batch_size: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Score every case of ``split``; returns (one row per case and region, slice-level means)."""
    slices_dir = Path(slices_dir)
    cases = pd.read_parquet(slices_dir / "cases.parquet")
    cases = cases[(cases["split"] == split) & (cases["n_slices"] > 0)]
    if cases.empty:
        raise empty_split_error(slices_dir, split)
    rows, slice_counts = [], {r: np.zeros(3) for r in bundle.regions}
    slice_scores: dict[str, list[float]] = {r: [] for r in bundle.regions}
    for rec in progress(cases.to_dict("records"), desc=f"evaluate {split}", unit="case"):
        shard = read_shard(slices_dir / rec["shard"])
        probs = predict_slices(bundle.model, shard["images"], batch_size).float().cpu().numpy()
        seg, meta = read_nifti(canonical_files(Path(raw_dir) / rec["case_id"])["seg"])
        geometry = CaseGeometry.from_record(rec)
        predicted = {region: restore_volume(probs[:, r], shard["z"], geometry) > bundle.threshold
                     for r, region in enumerate(bundle.regions)}
        rows.extend(score_case(rec["case_id"], predicted, seg, meta.spacing))
        for r, region in enumerate(bundle.regions):
            _slice_level(probs[:, r] > bundle.threshold, region_mask(shard["labels"], region),
                         slice_counts[region], slice_scores[region])
    frame = pd.DataFrame(rows)
    slice_level = {region: {"dice_mean": float(np.mean(slice_scores[region])),
                            "dice_pooled": scores_from_counts(*map(int, slice_counts[region]))["dice"]}
                   for region in bundle.regions}
    return frame, slice_level


def score_case(case_id: str, predicted: dict[str, np.ndarray], seg: np.ndarray,
               spacing: tuple[float, ...]) -> list[dict]:
    """One row per region: docs/design.md's metrics of the boolean masks ``predicted[region]`` against the
    canonical label map ``seg`` (both on the case's own grid), with voxel counts and the empty-mask rule hit."""
    rows = []
    for region, pred in predicted.items():
        ref = region_mask(seg, region)
        n_ref, n_pred = int(ref.sum()), int(pred.sum())
        rows.append({"case_id": case_id, "region": region, "ref_voxels": n_ref, "pred_voxels": n_pred,
                     "empty_rule": empty_rule(n_pred, n_ref), **case_metrics(pred, ref, spacing)})
    return rows


def _slice_level(pred: np.ndarray, ref: np.ndarray, counts: np.ndarray, scores: list[float]) -> None:
    """Accumulate slice-space counts and per-slice Dice (what a per-slice training loop reports)."""
    tp = (pred & ref).sum(axis=(1, 2))
    fp, fn = pred.sum(axis=(1, 2)) - tp, ref.sum(axis=(1, 2)) - tp
    counts += [tp.sum(), fp.sum(), fn.sum()]
    scores.extend(scores_from_counts(int(a), int(b), int(c))["dice"] for a, b, c in zip(tp, fp, fn))


def summarise_cases(frame: pd.DataFrame, slice_level: dict) -> dict:
    """eval.json: per region, mean / median / std over cases of every metric, how many cases hit each
    empty-mask rule (both empty: HD95 0 mm; one empty: HD95 373.13 mm), and the slice-level means."""
    out: dict = {"n_cases": int(frame["case_id"].nunique())}
    for region, group in frame.groupby("region", sort=False):
        stats = {m: summarise(group[m].tolist()) for m in METRICS}
        rules = group["empty_rule"].fillna("")
        out[region] = {**{f"{m}_{k}": v for m, s in stats.items() for k, v in s.items() if k != "n_nan"},
                       "cases_both_empty": int((rules == "both_empty").sum()),
                       "cases_one_empty": int((rules == "one_empty").sum()),
                       "slice_level_dice_mean": slice_level[region]["dice_mean"],
                       "slice_level_dice_pooled": slice_level[region]["dice_pooled"]}
    return out


def write_overlays(bundle: ModelBundle, frame: pd.DataFrame, slices_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """PNG overlays of the best, median and worst case by Dice (first region) among the cases with tumour
    (all cases when none has), each at its slice with the most tumour: agreement, false negatives and false
    positives in distinct colours."""
    region = bundle.regions[0]
    scored = frame[frame["region"] == region]
    with_tumour = scored[scored["ref_voxels"] > 0]
    ranked = (with_tumour if len(with_tumour) else scored).sort_values(["dice", "case_id"]).reset_index(drop=True)
    picks = {"worst": ranked.iloc[0], "median": ranked.iloc[len(ranked) // 2], "best": ranked.iloc[-1]}
    cases = pd.read_parquet(Path(slices_dir) / "cases.parquet").set_index("case_id")
    paths = []
    for name, row in picks.items():
        shard = read_shard(Path(slices_dir) / cases.loc[row["case_id"], "shard"])
        ref = region_mask(shard["labels"], region)
        k = int(ref.sum(axis=(1, 2)).argmax())
        probs = predict_slices(bundle.model, shard["images"][k:k + 1]).float().cpu().numpy()[0, 0]
        title = f"{name}: {row['case_id']} z={int(shard['z'][k])} {region.upper()} Dice {row['dice']:.3f}"
        paths.append(plot_overlay(shard["images"][k, 0].astype(np.float32), ref[k], probs > bundle.threshold,
                                  title, Path(out_dir) / f"{name}.png"))
    return paths
