"""Which epoch a training run keeps (``train.select``): the best mean Dice per validation patient (``dice``), or the
best mean lesion-wise Dice per validation patient (``lesion_dice``): the metric the promotion gate compares, here
raw (threshold 0.5, no post-processing), so not the gate's value itself.

Both are whole-volume, per-patient numbers, taken in slice space: a validation patient's slices stacked in axial
order (every brain slice of the validation split). The lesion-wise Dice is the official BraTS one of
:mod:`brats_seg.evaluation.lesionwise` (lesions 26-connected, every lesion counted), with a slice pixel measured as
the case's crop side / slice size original voxels in-plane and one across (1 mm voxels, as BraTS holds them); only
the ``mets`` configuration's 20 mm3 lesion size depends on that, the other configurations count lesions alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from brats_seg.data.labels import region_mask
from brats_seg.evaluation.evaluate import lesion_score

METRIC = {"dice": "val_dice", "lesion_dice": "val_lesion_dice"}  # train.select -> the history's key


@dataclasses.dataclass(frozen=True)
class LesionSelection:
    """What scoring validation patients lesion-wise needs: the official configuration (``evaluate.lesionwise``) and,
    per case, the in-plane size of a slice pixel in mm (crop side / slice size; 1 where a case is not listed)."""

    config: str = "gli"
    pixel_mm: Mapping[str, float] = dataclasses.field(default_factory=dict)


def lesion_dice(predicted: np.ndarray, labels: np.ndarray, case_ids: np.ndarray, z: np.ndarray,
                regions: tuple[str, ...], selection: LesionSelection) -> float:
    """Mean over cases, then over regions, of each case's lesion-wise Dice: ``predicted`` boolean ``[N, R, S, S]``
    (region masks of N slices), ``labels`` uint8 ``[N, S, S]``, each slice's case and axial position."""
    score = lesion_score(selection.config)
    per_region = np.zeros(len(regions))
    cases = np.unique(case_ids)
    for case in cases:
        rows = np.flatnonzero(case_ids == case)
        rows = rows[np.argsort(z[rows], kind="stable")]
        pixel = float(selection.pixel_mm.get(str(case), 1.0))
        for r, region in enumerate(regions):
            per_region[r] += score(predicted[rows, r], region_mask(labels[rows], region), (1.0, pixel, pixel))
    return float(per_region.mean() / len(cases))


def selection_for(cases: Mapping[str, tuple[int, int]], config: str) -> LesionSelection:
    """A :class:`LesionSelection` from each case's ``(crop side, slice size)`` in voxels (cases.parquet)."""
    return LesionSelection(config, {case: side / size for case, (side, size) in cases.items()})
