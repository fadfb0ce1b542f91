"""Per-patient evaluation in the original grid, by the legacy and the lesion-wise BraTS rules.

Each case's brain slices are segmented by the one predict step (:mod:`brats_seg.inference.segment`: probabilities mapped
back to the case's own grid, thresholded, post-processed as the model says, nested as a label map) and scored
per region against the case's label map: the legacy metrics of :mod:`brats_seg.evaluation.metrics` (``eval_cases.csv``)
and the official lesion-wise ones of :mod:`brats_seg.evaluation.lesionwise` (``eval_lesions.csv``, named as the official
package names them). Slice-level means in slice space are reported too, labelled as such: they are what a
Keras-style loop prints and are not comparable with BraTS results.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from brats_seg.data.dataset import empty_split_error
from brats_seg.data.labels import region_mask, regions_to_labels
from brats_seg.data.layouts import canonical_files
from brats_seg.data.preprocess import CaseGeometry
from brats_seg.errors import DataError
from brats_seg.evaluation import lesionwise
from brats_seg.evaluation.choose_postprocess import MAIN_FRACTIONS, Choice, choose, choose_threshold
from brats_seg.evaluation.lesion_configs import get_config
from brats_seg.evaluation.lesionwise import lesion_columns
from brats_seg.evaluation.metrics import (
    METRICS,
    case_metrics,
    empty_rule,
    far_false_positives,
    scores_from_counts,
    summarise,
)
from brats_seg.inference.bundle import ModelBundle
from brats_seg.inference.segment import restore_masks, segment_case
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import read_shard
from brats_seg.progress import progress

# The lesion-wise numbers beside the legacy ones in eval_cases.csv, which the promotion gate compares (every
# official one, under its official name and with the official NaN and inf, is in eval_lesions.csv).
LESION_COLUMNS = ("lesion_dice", "lesion_hd95", "lesion_pq")


# What eval.json keeps of each (a DVC metric: `dvc exp show` shows every key): the means the gate compares, and the
# median HD95 (HD95 is skewed by the 373 mm penalties; the legacy HD95 is summarised the same way).
LESION_SUMMARY = {"lesion_dice": "mean", "lesion_hd95": "median", "lesion_pq": "mean"}


@dataclasses.dataclass(frozen=True)
class CasePrediction:
    """One sliced case segmented: its record in cases.parquet, its shard, its canonical label map and spacing,
    and the slice probabilities and region masks on its grid."""

    record: dict
    shard: dict
    seg: np.ndarray
    spacing: tuple[float, ...]
    probabilities: np.ndarray
    masks: dict[str, np.ndarray]


def split_cases(slices_dir: str | Path, split: str) -> pd.DataFrame:
    """The cases of ``split`` that have slices (cases.parquet rows); refused with one sentence when none has."""
    cases = pd.read_parquet(Path(slices_dir) / "cases.parquet")
    cases = cases[(cases["split"] == split) & (cases["n_slices"] > 0)]
    if cases.empty:
        raise empty_split_error(Path(slices_dir), split)
    return cases


def predicted_cases(bundle: ModelBundle, slices_dir: str | Path, raw_dir: str | Path, split: str = "test",
                    batch_size: int | None = None, postprocess: bool = True) -> Iterator[CasePrediction]:
    """Every sliced case of ``split`` segmented from its shard, with a progress bar."""
    for rec in progress(split_cases(slices_dir, split).to_dict("records"), desc=f"segment {split}", unit="case"):
        shard = read_shard(Path(slices_dir) / rec["shard"])
        seg_file = canonical_files(Path(raw_dir) / rec["case_id"]).get("seg")
        if seg_file is None:
            raise DataError(f"case {rec['case_id']} of the {split} split has no label file in {raw_dir}; the raw data "
                            f"does not match the slices: run `dvc checkout` (or `dvc repro download`), then retry.")
        seg, meta = read_nifti(seg_file)
        seg = np.ascontiguousarray(seg)  # in the masks' C order: each region mask and comparison of it stays fast
        done = segment_case(bundle, shard["images"], shard["z"], CaseGeometry.from_record(rec), meta.spacing,
                            batch_size, postprocess)
        yield CasePrediction(rec, shard, seg, meta.spacing, done.probabilities, done.masks)


def evaluate_cases(bundle: ModelBundle, slices_dir: str | Path, raw_dir: str | Path, split: str = "test",
                   batch_size: int | None = None, lesion_config: str = "gli") -> tuple[pd.DataFrame, dict]:
    """Score every case of ``split``; returns (one row per case and region, slice-level means). Each row holds
    the legacy metrics, ``lesion_dice`` and ``lesion_hd95``, and under ``official`` every lesion-wise metric."""
    split_cases(slices_dir, split)  # an empty split is one sentence before anything else
    rows, slice_counts = [], {r: np.zeros(3) for r in bundle.regions}
    slice_scores: dict[str, list[float]] = {r: [] for r in bundle.regions}
    for case in predicted_cases(bundle, slices_dir, raw_dir, split, batch_size):
        rows.extend(score_case(case.record["case_id"], case.masks, case.seg, case.spacing, lesion_config))
        for r, region in enumerate(bundle.regions):
            _slice_level(case.probabilities[:, r] > bundle.threshold, region_mask(case.shard["labels"], region),
                         slice_counts[region], slice_scores[region])
    frame = pd.DataFrame(rows)
    slice_level = {region: {"dice_mean": float(np.mean(slice_scores[region])),
                            "dice_pooled": scores_from_counts(*map(int, slice_counts[region]))["dice"]}
                   for region in bundle.regions}
    return frame, slice_level


def score_case(case_id: str, predicted: dict[str, np.ndarray], seg: np.ndarray, spacing: tuple[float, ...],
               lesion_config: str | None = "gli") -> list[dict]:
    """One row per region: docs/design.md's metrics of the boolean masks ``predicted[region]`` against the
    canonical label map ``seg`` (both on the case's own grid), with voxel counts, volumes in ml and the empty-mask
    rule hit; and with a ``lesion_config`` the official lesion-wise metrics of the label map the masks make
    (``official``)."""
    official = {} if lesion_config is None else lesionwise.score_canonical(
        regions_to_labels(predicted), seg, spacing, lesion_config)
    rows, voxel_ml = [], float(np.prod(spacing[:3])) / 1000.0  # mm^3 -> ml
    for region, pred in predicted.items():
        ref = region_mask(seg, region)
        n_ref, n_pred = int(ref.sum()), int(pred.sum())
        row = {"case_id": case_id, "region": region, "ref_voxels": n_ref, "pred_voxels": n_pred,
               "ref_ml": n_ref * voxel_ml, "pred_ml": n_pred * voxel_ml,
               "empty_rule": empty_rule(n_pred, n_ref), **case_metrics(pred, ref, spacing),
               "far_fp_ml": far_false_positives(pred, ref, spacing) * voxel_ml}
        if region in official:
            row.update(lesion_columns(official[region], lesion_config), official=official[region],
                       pred_lesions=official[region]["n_pred_instances"],
                       ref_lesions=official[region]["n_ref_instances"])
        rows.append(row)
    return rows


def lesion_table(frame: pd.DataFrame) -> pd.DataFrame:
    """eval_lesions.csv: one row per case and region, every official lesion-wise metric under its own name."""
    return pd.DataFrame([{"case_id": row["case_id"], "region": row["region"], **row["official"]}
                         for row in frame.to_dict("records") if isinstance(row.get("official"), dict)])


def _slice_level(pred: np.ndarray, ref: np.ndarray, counts: np.ndarray, scores: list[float]) -> None:
    """Accumulate slice-space counts and per-slice Dice (what a per-slice training loop reports)."""
    tp = (pred & ref).sum(axis=(1, 2))
    fp, fn = pred.sum(axis=(1, 2)) - tp, ref.sum(axis=(1, 2)) - tp
    counts += [tp.sum(), fp.sum(), fn.sum()]
    scores.extend(scores_from_counts(int(a), int(b), int(c))["dice"] for a, b, c in zip(tp, fp, fn))


def summarise_cases(frame: pd.DataFrame, slice_level: dict) -> dict:
    """eval.json: per region, mean / median / std over cases of every legacy metric, the mean lesion-wise Dice and
    panoptic quality and the median lesion-wise HD95, how many cases hit each empty-mask rule (both empty: HD95
    0 mm; one empty: HD95 373.13 mm), and the slice-level means."""
    out: dict = {"n_cases": int(frame["case_id"].nunique())}
    for region, group in frame.groupby("region", sort=False):
        stats = {m: summarise(group[m].tolist()) for m in METRICS}
        stats.update({m: {k: v for k, v in summarise(group[m].tolist()).items() if k == LESION_SUMMARY[m]}
                      for m in LESION_COLUMNS if m in group})
        rules = group["empty_rule"].fillna("")
        out[region] = {**{f"{m}_{k}": v for m, s in stats.items() for k, v in s.items() if k != "n_nan"},
                       "cases_both_empty": int((rules == "both_empty").sum()),
                       "cases_one_empty": int((rules == "one_empty").sum()),
                       "slice_level_dice_mean": slice_level[region]["dice_mean"],
                       "slice_level_dice_pooled": slice_level[region]["dice_pooled"]}
    return out




def choose_postprocessing(bundle: ModelBundle, slices_dir: str | Path, raw_dir: str | Path,
                          lesion_config: str = "gli", split: str = "val", main_tumour: bool = False,
                          postprocess: bool = True, thresholds: Sequence[float] = ()) -> Choice:
    """Post-processing for ``bundle`` chosen on the patients of ``split`` (the validation split: never the test
    patients) to maximise each region's lesion-wise Dice
    (:data:`brats_seg.evaluation.lesionwise.LESION_DICE`, the number
    the promotion gate averages), on the raw masks of the one predict step; ``postprocess=False`` chooses none.
    With ``thresholds``, also the probability threshold (those and 0.5) whose post-processed masks score best;
    without, the masks are made at ``bundle.threshold``."""
    options = {"regions": bundle.regions, "main_fractions": MAIN_FRACTIONS if postprocess and main_tumour else ()}
    if not postprocess:
        options.update(candidates_mm3=(), et_candidates_mm3=())
    if not thresholds:
        cases = [(case.masks, case.seg, case.spacing)
                 for case in predicted_cases(bundle, slices_dir, raw_dir, split, postprocess=False)]
        return dataclasses.replace(choose(cases, lesion_score(lesion_config), **options), threshold=bundle.threshold)
    kept = [(case.probabilities, case.shard["z"], CaseGeometry.from_record(case.record), case.seg, case.spacing)
            for case in predicted_cases(bundle, slices_dir, raw_dir, split, postprocess=False)]

    def cases_at(threshold: float) -> list:
        at = dataclasses.replace(bundle, threshold=threshold)
        return [(restore_masks(at, probabilities, z, geometry, spacing, postprocess=False), seg, spacing)
                for probabilities, z, geometry, seg, spacing in kept]

    return choose_threshold(cases_at, lesion_score(lesion_config), thresholds, **options)


def lesion_score(lesion_config: str = "gli") -> Callable[[np.ndarray, np.ndarray, tuple[float, ...]], float]:
    """One region's ``lesion_dice`` (:func:`lesion_columns`) of two boolean masks: what post-processing maximises.
    Distances are skipped: Dice alone is about twice as fast."""
    config = get_config(lesion_config)

    def score(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
        official = lesionwise.region_metrics(pred, ref, spacing, config, distances=False)
        dice = float(lesion_columns(official, lesion_config)["lesion_dice"])
        if math.isnan(dice):  # mets: no reference lesion large enough to rank; false lesions still cost
            return 0.0 if official["n_pred_instances"] else 1.0
        return dice

    score.label = "lesion-wise Dice"  # type: ignore[attr-defined]  # what the choice's log line calls it
    return score
