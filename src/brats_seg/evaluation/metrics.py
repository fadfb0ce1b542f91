"""Segmentation metrics, the only definitions (docs/design.md).

Per case in the original grid: Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), precision = TP/(TP+FP),
recall = TP/(TP+FN), and HD95: the 95th percentile of the surface distances of both masks pooled together
(surface = mask minus its 6-connected erosion; Euclidean distance transform with the voxel spacing, mm).

Empty cases (BraTS rule): both empty -> Dice, IoU, precision, recall = 1; only one empty -> Dice, IoU = 0;
no predicted voxels -> precision 1 if the reference is empty else 0; empty reference -> recall 1 if the
prediction is empty else 0. HD95 (BraTS ranking rule): both masks empty -> 0 mm; exactly one empty ->
373.13 mm, the diagonal of a 240 x 240 x 155 1 mm grid, so that a missed tumour counts against the mean
instead of vanishing from it.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("dice", "iou", "precision", "recall", "hd95")
HD95_ONE_EMPTY_MM = math.sqrt(240**2 + 240**2 + 155**2)  # 373.13 mm


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of two boolean masks of one shape."""
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {ref.shape}")
    pred, ref = pred.astype(bool), ref.astype(bool)
    tp = int(np.count_nonzero(pred & ref))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def scores_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Dice, IoU, precision and recall from counts, with the BraTS empty-case rules."""
    ref_empty, pred_empty = tp + fn == 0, tp + fp == 0
    if ref_empty and pred_empty:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": (0.0 if not ref_empty else 1.0) if pred_empty else tp / (tp + fp),
        "recall": (0.0 if not pred_empty else 1.0) if ref_empty else tp / (tp + fn),
    }


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion with the 6-connected (face) structuring element."""
    from scipy import ndimage  # here, not at the top: the promotion gate reads summarise() without scipy's 0.2 s

    mask = mask.astype(bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile of the pooled surface distances (mm) between two masks; 0 mm when both are empty,
    :data:`HD95_ONE_EMPTY_MM` when exactly one is."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return HD95_ONE_EMPTY_MM
    box = bounding_box(pred | ref, pad=2)
    from scipy import ndimage

    sp, sr = surface(pred[box]), surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """Slices around the mask's voxels (plus ``pad``), None for an empty mask: distances and lesions between the
    masks don't change, the distance transforms and labellings get much cheaper. (What ``ndimage.find_objects``
    gives for one label, from one projection per axis: a sixth to a fourteenth of its time on a BraTS case.)"""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - pad, 0), int(idx[-1]) + pad + 1))
    return tuple(box)


def empty_rule(pred_voxels: int, ref_voxels: int) -> str:
    """Which empty-mask rule a case falls under: ``both_empty``, ``one_empty`` or ``""`` (none)."""
    empties = (pred_voxels == 0) + (ref_voxels == 0)
    return ("", "one_empty", "both_empty")[empties]


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Every metric of docs/design.md for one case and one region; also the voxel counts."""
    tp, fp, fn = confusion(pred, ref)
    return {**scores_from_counts(tp, fp, fn), "hd95": hd95(pred, ref, spacing),
            "tp": tp, "fp": fp, "fn": fn}


# How far around the reference's bounding box a false positive still counts as at the tumour's border.
FAR_MARGIN_MM = 10.0


def far_false_positives(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
                        margin_mm: float = FAR_MARGIN_MM) -> int:
    """Predicted voxels outside the reference's bounding box widened by ``margin_mm`` on every side: false
    positives far from the tumour (every predicted voxel when the reference is empty)."""
    if not ref.any():
        return int(pred.sum())
    box = []
    for axis in range(ref.ndim):
        hit = np.flatnonzero(ref.any(axis=tuple(a for a in range(ref.ndim) if a != axis)))
        pad = int(math.ceil(margin_mm / float(spacing[axis])))
        box.append(slice(max(int(hit[0]) - pad, 0), int(hit[-1]) + pad + 1))
    return int(pred.sum()) - int(pred[tuple(box)].sum())


def summarise(values: list[float]) -> dict[str, float]:
    """Mean, median and standard deviation over cases, ignoring NaN; ``n_nan`` counts the NaN cases."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    if finite.size == 0:
        return {"mean": math.nan, "median": math.nan, "std": math.nan, "n_nan": int(arr.size)}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)), "std": float(finite.std()),
            "n_nan": int(arr.size - finite.size)}
