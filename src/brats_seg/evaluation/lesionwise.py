"""BraTS lesion-wise metrics, as the official ``brats-evaluation`` 0.0.10 package computes them (on ``panoptica``
2.1.7), rebuilt with numpy and scipy. tests/test_lesionwise.py checks them number by number against that package.

The rules, read from its source (``brats_evaluation/configs/config_*.yaml``, ``metrics_parser.py``; panoptica's
instance approximator, ``MaxBipartiteMatching``, instance evaluator, result and edge-case handler):

- Regions: each config names label groups in the label ids of its challenge's files (gli: WT {1,2,3}, TC {1,3},
  ET {3} in BraTS 2023 labels). Here they come from the project's canonical labels (WT {1,2,4}, TC {1,4}, ET {4}).
- Lesions: the 26-connected components (cc3d's default) of each region mask, in reference and prediction alike.
  No lesion is dropped for its size, in either mask.
- Matching: one-to-one; every overlapping pair with lesion Dice >= 1e-6 gets the cost 1 - Dice, others 1 + 1e-6;
  ``scipy.optimize.linear_sum_assignment``, and an assigned pair with cost < 1 is a match (tp). fp = prediction
  lesions - tp, fn = reference lesions - tp; prec = tp / predicted lesions, rec = tp / reference lesions (NaN
  here where the official result leaves the key out: no lesion to divide by), rq (F1) = tp / (tp + fp/2 + fn/2).
- ``sq_*`` are the mean over matched lesions only (``sq_*_std`` their population std; 0 for one lesion, NaN for
  none) of the lesion Dice, HD95 (95th percentile of both directed surface distances pooled; surface = mask minus
  its 6-connected erosion; mm) and NSD (the GaNDLF variant, tolerance = the smallest voxel spacing, mm).
  ``pq_dsc`` = sq_dsc * rq. With no match: Dice 0, HD95 inf, NSD 0; all NaN when both masks are empty.
- ``global_bin_*``: the region compared as one mask. Without overlap they take the no-match values above (so HD95
  is inf even for two disjoint non-empty masks). The package passes no spacing to them: their HD95 is in voxels
  and their NSD tolerance is 0.5 voxel, which are mm only on 1 mm grids (all BraTS data).
- ``lesionwise_*_{mean,std}`` are the columns of ``brats-parse-metrics``, the leaderboard's numbers. ``seg`` (every
  config but mets) copies sq_dsc, sq_hd95, sq_nsd and their stds. ``mets`` keeps reference lesions of at least
  20 mm^3 (its default --vol_threshold): a matched one adds its Dice, HD95, NSD, a missed one and every false
  positive (whatever its size) add 0, 373 mm, 0; the means skip an infinite HD95 (373 if none is left); NaN when
  the reference has no lesion of that size.

The official package reads NIfTI files through SimpleITK and pairs the (z, y, x) array with the (x, y, z) spacing:
on anisotropic grids its HD95 and NSD use the spacing in reverse axis order. Here ``spacing`` follows the array.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from brats_seg.data.labels import region_mask
from brats_seg.evaluation.lesion_configs import LesionConfig, get_config
from brats_seg.evaluation.metrics import bounding_box

LESION_DICE = "lesionwise_dsc_mean"
"""The leaderboard's lesion-wise Dice: the ``lesionwise_dsc_mean_<region>`` column of ``brats-parse-metrics``,
which is panoptica's ``sq_dsc`` (mean Dice of the matched lesions) for every config but mets, and for mets the mean
over lesions of at least 20 mm^3 with missed lesions and false positives counted as 0. It is NaN when reference
and prediction are both empty (mets: when the reference has no such lesion), so an average over cases must skip NaN.
Outside mets it ignores false-positive and missed lesions once one lesion matches; ``pq_dsc`` (sq_dsc x F1) counts them.
"""
HD95_PENALTY_MM = 373.0  # brats-parse-metrics: "diameter of the cube in SRI space" for an infinite HD95
_NO_MATCH_COST = 1.0 + 1e-6
_CROP_PAD = 2  # panoptica crops each pair to its bounding box plus 2 voxels
_NO_MATCH = {"dsc": 0.0, "hd95": math.inf, "nsd": 0.0}  # the configs' zero-TP results (NaN with no lesion at all)
_GLOBAL_NSD_TOLERANCE = 0.5  # voxels: panoptica's default when no spacing reaches the metric


def region_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], config: LesionConfig,
                   distances: bool = True) -> dict[str, float]:
    """Lesion-wise metrics of one region, under the official names, for boolean masks ``(X, Y, Z)`` on one grid
    with ``spacing`` in mm per array axis. ``distances=False`` leaves out every HD95 and NSD key (Dice and counts
    only: about half the time on a 240 x 240 x 155 case)."""
    pred, ref = _crop(np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool))
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[config.connectivity])
    ref_lesions, n_ref = ndimage.label(ref, structure=structure)
    pred_lesions, n_pred = ndimage.label(pred, structure=structure)
    pairs, dice = _match(ref_lesions, n_ref, pred_lesions, n_pred, config.matching_threshold)
    lists = _lesion_scores(ref_lesions, pred_lesions, pairs, dice, spacing, distances)
    tp = len(pairs)
    out = _counts(tp, n_pred, n_ref)
    for metric, values in lists.items():
        out[f"sq_{metric}"] = float(np.mean(values)) if tp else _no_match(metric, n_pred, n_ref)
        out[f"sq_{metric}_std"] = float(np.std(values)) if tp else math.nan
    out["pq_dsc"] = out["sq_dsc"] * out["rq"]
    ref_sizes = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1)[1:]
    voxel_mm3 = float(np.prod(spacing))
    matched = ref_sizes[[r - 1 for r, _ in pairs]]
    out["instance_voxel_count_ref"] = float(np.mean(matched)) if tp else math.nan
    out["instance_volume_ref"] = float(np.mean(matched * voxel_mm3)) if tp else math.nan
    out |= _global_scores(pred, ref, n_pred, n_ref, distances)
    if config.large_lesion_mm3 is None:
        out |= {f"lesionwise_{m}_{s}": out[f"sq_{m}" + ("_std" if s == "std" else "")]
                for m in lists for s in ("mean", "std")}
    else:
        volumes = ref_sizes * voxel_mm3
        out |= _large_lesion_means(lists, pairs, volumes, n_pred - tp, config.large_lesion_mm3)
    return out


def score_canonical(pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: tuple[float, float, float],
                    config: str = "gli", distances: bool = True) -> dict[str, dict[str, float]]:
    """``{"wt": {...}, "tc": {...}, "et": {...}}`` (the project regions ``config`` maps, see
    :attr:`LesionConfig.project_regions`) for canonical label maps ``(X, Y, Z)`` with ``spacing`` in mm."""
    cfg = get_config(config)
    return {key: region_metrics(region_mask(pred_labels, key), region_mask(ref_labels, key), spacing, cfg, distances)
            for key, _ in cfg.project_regions}


def _crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus 2 voxels (as panoptica does; no result changes)."""
    cut = bounding_box(pred | ref, _CROP_PAD)
    return (pred, ref) if cut is None else (pred[cut], ref[cut])


def _match(ref_lesions: np.ndarray, n_ref: int, pred_lesions: np.ndarray, n_pred: int,
           threshold: float) -> tuple[list[tuple[int, int]], dict[tuple[int, int], float]]:
    """Matched (reference, prediction) lesion ids, by reference id, and the Dice of every overlapping pair."""
    if n_ref == 0 or n_pred == 0:
        return [], {}
    both = (ref_lesions > 0) & (pred_lesions > 0)
    codes, overlap = np.unique(ref_lesions[both].astype(np.int64) * (n_pred + 1) + pred_lesions[both],
                               return_counts=True)
    ref_size = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1)
    pred_size = np.bincount(pred_lesions.ravel(), minlength=n_pred + 1)
    cost = np.full((n_ref, n_pred), _NO_MATCH_COST)
    dice = {}
    for code, inter in zip(codes.tolist(), overlap.tolist(), strict=True):
        r, p = divmod(code, n_pred + 1)
        dice[r, p] = 2.0 * inter / (ref_size[r] + pred_size[p])
        if dice[r, p] >= threshold:
            cost[r - 1, p - 1] = 1.0 - dice[r, p]
    rows, cols = linear_sum_assignment(cost)
    pairs = sorted((int(r) + 1, int(c) + 1) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1.0)
    return pairs, dice


def _lesion_scores(ref_lesions: np.ndarray, pred_lesions: np.ndarray, pairs: list[tuple[int, int]],
                   dice: dict[tuple[int, int], float], spacing: tuple[float, float, float],
                   distances: bool) -> dict[str, list[float]]:
    """Dice (and HD95, NSD in mm) of each matched lesion pair, each pair cut to its own box plus 2 voxels."""
    scores: dict[str, list[float]] = {"dsc": [dice[pair] for pair in pairs]}
    if not distances:
        return scores
    scores |= {"hd95": [], "nsd": []}
    ref_boxes, pred_boxes = ndimage.find_objects(ref_lesions), ndimage.find_objects(pred_lesions)
    for r, p in pairs:
        box = tuple(slice(max(min(a.start, b.start) - _CROP_PAD, 0), max(a.stop, b.stop) + _CROP_PAD)
                    for a, b in zip(ref_boxes[r - 1], pred_boxes[p - 1], strict=True))
        to_pred, to_ref = _surface_distances(ref_lesions[box] == r, pred_lesions[box] == p, spacing)
        scores["hd95"].append(_hd95(to_pred, to_ref))
        scores["nsd"].append(_nsd(to_pred, to_ref, min(spacing)))
    return scores


def _surface_distances(ref: np.ndarray, pred: np.ndarray,
                       spacing: tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm; voxels when ``spacing`` is None) from each reference surface voxel to the prediction's
    surface, and from each prediction surface voxel to the reference's. Surface = mask minus its 6-connected
    erosion; both masks non-empty."""
    footprint = ndimage.generate_binary_structure(ref.ndim, 1)
    ref_surface = ref ^ ndimage.binary_erosion(ref, structure=footprint)
    pred_surface = pred ^ ndimage.binary_erosion(pred, structure=footprint)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[ref_surface]
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)[pred_surface]
    return to_pred, to_ref


def _hd95(to_pred: np.ndarray, to_ref: np.ndarray) -> float:
    return float(np.percentile(np.hstack((to_pred, to_ref)), 95))


def _nsd(to_pred: np.ndarray, to_ref: np.ndarray, tolerance: float) -> float:
    """panoptica's normalized surface Dice (GaNDLF's formula, kept term by term so that floats agree)."""
    tp_a, tp_b = np.sum(to_pred <= tolerance) / len(to_pred), np.sum(to_ref <= tolerance) / len(to_ref)
    fp, fn = np.sum(to_pred > tolerance) / len(to_pred), np.sum(to_ref > tolerance) / len(to_ref)
    return float((tp_a + tp_b) / (tp_a + tp_b + fp + fn + sys.float_info.min))


def _no_match(metric: str, n_pred: int, n_ref: int) -> float:
    """The configs' value for a metric without any matched lesion: NaN when neither mask has a lesion."""
    return math.nan if n_pred + n_ref == 0 else _NO_MATCH[metric]


def _counts(tp: int, n_pred: int, n_ref: int) -> dict[str, float]:
    fp, fn = n_pred - tp, n_ref - tp
    if tp:
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    else:
        rq = 0.0 if n_pred + n_ref else math.nan
    return {"n_ref_instances": n_ref, "n_pred_instances": n_pred, "tp": tp, "fp": fp, "fn": fn,
            "prec": tp / n_pred if n_pred else math.nan, "rec": tp / n_ref if n_ref else math.nan, "rq": rq}


def _global_scores(pred: np.ndarray, ref: np.ndarray, n_pred: int, n_ref: int, distances: bool) -> dict[str, float]:
    """The region as one mask (``global_bin_*``); HD95 in voxels and NSD at 0.5 voxel, as the package computes them."""
    inter, n_p, n_r = int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    out: dict[str, float] = {"global_bin_volume_pred": n_p, "global_bin_volume_ref": n_r}
    metrics = ("dsc", "hd95", "nsd") if distances else ("dsc",)
    if inter == 0:
        return out | {f"global_bin_{m}": _no_match(m, n_pred, n_ref) for m in metrics}
    out["global_bin_dsc"] = 2 * inter / (n_r + n_p)
    if distances:
        to_pred, to_ref = _surface_distances(ref, pred, None)
        out["global_bin_hd95"] = _hd95(to_pred, to_ref)
        out["global_bin_nsd"] = _nsd(to_pred, to_ref, _GLOBAL_NSD_TOLERANCE)
    return out


def _large_lesion_means(lists: dict[str, list[float]], pairs: list[tuple[int, int]], volumes: np.ndarray,
                        n_fp: int, threshold_mm3: float) -> dict[str, float]:
    """``brats-parse-metrics mets``: lesion-wise means over reference lesions of at least ``threshold_mm3``, a
    missed one and each false positive counting as Dice 0, HD95 373 mm, NSD 0."""
    large = volumes >= threshold_mm3
    if not large.any():
        return {f"lesionwise_{m}_{s}": math.nan for m in lists for s in ("mean", "std")}
    matched = {r: i for i, (r, _) in enumerate(pairs)}
    large_ids = [int(i) + 1 for i in np.flatnonzero(large)]
    penalty = {"dsc": 0.0, "hd95": HD95_PENALTY_MM, "nsd": 0.0}
    out = {}
    for metric, values in lists.items():
        kept = [values[matched[r]] if r in matched else penalty[metric] for r in large_ids]
        kept += [penalty[metric]] * n_fp
        if metric == "hd95":
            kept = [v for v in kept if math.isfinite(v)]
        out[f"lesionwise_{metric}_mean"] = float(np.mean(kept)) if kept else HD95_PENALTY_MM
        out[f"lesionwise_{metric}_std"] = float(np.std(kept)) if kept else 0.0
    return out


# --- the project's columns (the gate's numbers) from the official ones --------------------------------------------

def lesion_columns(official: dict[str, float], config: str = "gli") -> dict[str, float]:
    """``lesion_dice`` and ``lesion_hd95`` of one case and region by the BraTS lesion-wise rule, every lesion counted
    (the official matching and per-lesion scores, above): the mean over matched, missed and
    false lesions of their Dice and HD95, a missed or false lesion scoring 0 and 373 mm. That is the official
    leaderboard column (``lesionwise_*_mean``) of the ``mets`` configuration; for the others that column averages
    the matched lesions only, so that false and missed lesions would not count once one lesion is matched (it stays
    in eval_lesions.csv). ``lesion_pq``: panoptica's ``pq_dsc`` (matched lesions' mean Dice x the F1 of the lesion
    counts). A region empty in both reference and prediction (NaN officially) scores 1 and 0 mm: an empty ET where
    the reference has none is perfect."""
    if official["n_ref_instances"] == 0 and official["n_pred_instances"] == 0:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0, "lesion_pq": 1.0}
    penalty = HD95_PENALTY_MM
    if get_config(config).large_lesion_mm3 is not None:  # the official column counts every lesion
        dice, hd95 = official[LESION_DICE], official.get("lesionwise_hd95_mean")
        return {"lesion_dice": dice, "lesion_hd95": hd95, "lesion_pq": official["pq_dsc"]}
    tp, missed = official["tp"], official["fp"] + official["fn"]
    dice = official["sq_dsc"] * tp / (tp + missed)
    hd95 = None if "sq_hd95" not in official else (
        (official["sq_hd95"] * tp if tp else 0.0) + penalty * missed) / (tp + missed)
    return {"lesion_dice": dice, "lesion_hd95": hd95, "lesion_pq": official["pq_dsc"]}
