"""The one predict step: slices -> probabilities -> the case's own grid -> threshold -> post-processing.

Evaluation, the promotion gate's re-score and ``brats-seg predict`` all segment a case through
:func:`segment_case`, so that what is scored is exactly what a user gets: region masks on the input's grid,
post-processed as the model's file says (:mod:`brats_seg.inference.postprocess`) and nested as a BraTS label map holds
them (ET inside TC inside WT).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from brats_seg.data.preprocess import CaseGeometry, restore_volume
from brats_seg.inference.bundle import ModelBundle, predict_mirrored, predict_slices
from brats_seg.inference.postprocess import NONE, apply


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """A case's slice probabilities ``[N, R, S, S]`` (float32, slice space) and its region masks on its own grid."""

    probabilities: np.ndarray
    masks: dict[str, np.ndarray]


def restore_masks(bundle: ModelBundle, probabilities: np.ndarray, z: np.ndarray, geometry: CaseGeometry,
                  spacing: tuple[float, ...], postprocess: bool = True) -> dict[str, np.ndarray]:
    """Region masks on the case's grid from slice probabilities: restored, thresholded, then post-processed (the
    model's own post-processing, or none with ``postprocess=False``) and nested."""
    raw = {region: restore_volume(probabilities[:, r], z, geometry) > bundle.threshold
           for r, region in enumerate(bundle.regions)}
    return apply(raw, spacing, bundle.postprocess if postprocess else NONE)


def slice_probabilities(bundle: ModelBundle, images: np.ndarray, batch_size: int | None = None,
                        tta: bool | None = None) -> np.ndarray:
    """Probabilities float32 ``[N, R, S, S]`` of preprocessed slices: one pass, or averaged over the mirrorings
    when the model says so (``bundle.tta``; ``tta`` overrides it)."""
    if bundle.tta if tta is None else tta:
        return predict_mirrored(bundle.model, images, batch_size)
    return predict_slices(bundle.model, images, batch_size).float().cpu().numpy()


def segment_case(bundle: ModelBundle, images: np.ndarray, z: np.ndarray, geometry: CaseGeometry,
                 spacing: tuple[float, ...], batch_size: int | None = None, postprocess: bool = True,
                 tta: bool | None = None) -> Segmentation:
    """Segment one case's preprocessed slices ``images`` ``[N, C, S, S]`` (at axial positions ``z``), with the
    model's test-time mirroring unless ``tta`` overrides it."""
    probabilities = slice_probabilities(bundle, images, batch_size, tta)
    return Segmentation(probabilities, restore_masks(bundle, probabilities, z, geometry, spacing, postprocess))
