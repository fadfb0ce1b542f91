"""Case preprocessing shared by the slice stage, evaluation and prediction, and its inverse.

Forward (:func:`preprocess_case`, or :func:`preprocess` with a :class:`~brats_seg.data.spec.SliceSpec`): reorient
to LPS (the BraTS orientation), crop every axial slice to the brain's bounding box made square with a margin,
z-score each modality over brain voxels (background 0; optionally clipped to the brain's 0.5th-99.5th
percentiles first), resize to ``size`` x ``size``, and optionally stack each slice's neighbours as extra
channels (2.5D context). Inverse (:func:`restore_volume`): resize back, uncrop, undo the
reorientation, landing exactly on the input's grid.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from brats_seg.data.labels import CANONICAL_LABELS
from brats_seg.data.spec import NORMALISATIONS, SliceSpec

TARGET_AXCODES = ("L", "P", "S")
CLIP_PERCENTILES = (0.5, 99.5)  # normalise: clip
_LABEL_VALUES = np.array(sorted(CANONICAL_LABELS), dtype=np.uint8)  # one-hot channel -> label id


@dataclasses.dataclass(frozen=True)
class CaseGeometry:
    """How slice space maps to the original grid. Lengths in voxels.

    ``shape``: original ``(X, Y, Z)``; ``ornt``: the original's orientation (nibabel ``io_orientation``);
    ``x0, y0, side``: square crop in the reoriented volume (may extend past the edges); ``size``: slice size.
    """

    shape: tuple[int, int, int]
    ornt: tuple[tuple[float, float], ...]
    x0: int
    y0: int
    side: int
    size: int

    def to_record(self) -> dict:
        return {"shape": list(self.shape), "ornt": [list(o) for o in self.ornt], "x0": self.x0, "y0": self.y0,
                "side": self.side, "size": self.size}

    @classmethod
    def from_record(cls, rec: dict) -> CaseGeometry:
        return cls(shape=tuple(int(s) for s in rec["shape"]), ornt=tuple(tuple(map(float, o)) for o in rec["ornt"]),
                   x0=int(rec["x0"]), y0=int(rec["y0"]), side=int(rec["side"]), size=int(rec["size"]))


@dataclasses.dataclass(frozen=True)
class Preprocessed:
    """Brain slices of one case. ``images`` ``[Z', C, S, S]`` float16; ``labels`` ``[Z', S, S]`` uint8 or
    None; ``z`` ``[Z']`` axial index in the LPS volume; ``brain_pixels`` ``[Z']`` in slice space."""

    images: np.ndarray
    labels: np.ndarray | None
    z: np.ndarray
    brain_pixels: np.ndarray
    geometry: CaseGeometry


def _to_lps(ornt: np.ndarray) -> np.ndarray:
    """Orientation transform from an image of orientation ``ornt`` to LPS."""
    return nib.orientations.ornt_transform(np.asarray(ornt), nib.orientations.axcodes2ornt(TARGET_AXCODES))


def _from_lps(ornt: np.ndarray) -> np.ndarray:
    """Orientation transform from LPS back to an image of orientation ``ornt``."""
    return nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(TARGET_AXCODES), np.asarray(ornt))


def preprocess(spec: SliceSpec, images: np.ndarray, affine: np.ndarray, seg: np.ndarray | None = None) -> Preprocessed:
    """:func:`preprocess_case` as ``spec`` says: what the slice stage, predict and rescore all call."""
    return preprocess_case(images, affine, spec.size, spec.margin, seg, context=spec.context,
                           normalise=spec.normalise)


def preprocess_case(images: np.ndarray, affine: np.ndarray, size: int = 128, margin: int = 4,
                    seg: np.ndarray | None = None, *, context: int = 0, normalise: str = "zscore") -> Preprocessed:
    """Preprocess ``images`` ``[C, X, Y, Z]`` (and optionally canonical labels ``[X, Y, Z]``).

    Returns the axial slices between the first and the last slice with brain (any modality non-zero),
    each laid out ``[Y, X]`` (rows anterior to posterior, as radiologists view axial slices), with
    ``C * (2 * context + 1)`` channels (:func:`stack_context`).
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalise!r}; use one of {', '.join(NORMALISATIONS)}")
    own = nib.orientations.io_orientation(affine)
    ornt = _to_lps(own)
    vols = [_reorient(c, ornt) for c in images]  # views for LPS input: no copy of the whole volume
    brain = vols[0] != 0
    for v in vols[1:]:
        brain |= v != 0
    if not brain.any():
        raise ValueError("the case has no brain voxels (every modality is zero)")
    x0, y0, side = _square_box(brain, margin)
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    zr = (int(zs[0]), int(zs[-1]) + 1)
    crop = np.stack([_crop_slices(v, x0, y0, side, zr, np.float32) for v in vols], axis=1)  # [Z', C, s, s]
    brain_c = _crop_slices(brain, x0, y0, side, zr, bool)
    normed = _zscore(crop, brain_c, clip=normalise == "clip")
    out = stack_context(_resize(torch.from_numpy(normed), size).to(torch.float16).numpy(), context)
    brain_px = np.rint(brain_c.sum(axis=(1, 2)) * (size / side) ** 2)  # in slice space
    labels = None
    if seg is not None:
        labels = resize_labels(_crop_slices(_reorient(seg, ornt), x0, y0, side, zr, np.uint8), size)
    geometry = CaseGeometry(tuple(int(s) for s in images.shape[1:4]), tuple(map(tuple, own.tolist())), x0, y0,
                            side, size)
    return Preprocessed(out, labels, np.arange(*zr, dtype=np.int16), brain_px.astype(np.int32), geometry)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Resize label maps ``[N, H, W]`` to ``[N, size, size]``.

    Each tumour label's indicator is resized bilinearly (background is one minus their sum) and the most
    likely label wins: smoother than nearest neighbour. Slices without tumour stay background.
    """
    out = np.zeros((labels.shape[0], size, size), dtype=np.uint8)
    tumour = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    if tumour.size:
        onehot = np.stack([labels[tumour] == v for v in _LABEL_VALUES[1:]], axis=1).astype(np.float32)
        fg = _resize(torch.from_numpy(onehot), size).numpy()
        probs = np.concatenate([1.0 - fg.sum(axis=1, keepdims=True), fg], axis=1)
        out[tumour] = _LABEL_VALUES[probs.argmax(axis=1)]
    return out


def restore_volume(slices: np.ndarray, z: np.ndarray, geometry: CaseGeometry) -> np.ndarray:
    """Map per-slice maps ``[Z', S, S]`` (``[Y, X]`` each; probabilities, float) back to the original
    ``(X, Y, Z)`` grid. Slices not listed in ``z`` are 0."""
    g = geometry
    canon_shape = _reoriented_shape(g.shape, _to_lps(g.ornt))
    up = _resize(torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None], g.side)[:, 0].numpy()
    vol = np.zeros(canon_shape, dtype=np.float32)
    xs, xd = _overlap(g.x0, g.side, canon_shape[0])
    ys, yd = _overlap(g.y0, g.side, canon_shape[1])
    vol[xd, yd, np.asarray(z, dtype=np.int64)] = up[:, ys, xs].transpose(2, 1, 0)
    return np.ascontiguousarray(_reorient(vol, _from_lps(g.ornt)))


def restore_labels(labels: np.ndarray, z: np.ndarray, geometry: CaseGeometry) -> np.ndarray:
    """Map label maps ``[Z', S, S]`` back to the original grid (per-label restore, then argmax)."""
    probs = np.stack([restore_volume((labels == v).astype(np.float32), z, geometry) for v in _LABEL_VALUES])
    return _LABEL_VALUES[probs.argmax(axis=0)]


def _reorient(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    ornt = np.asarray(ornt)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return arr
    return nib.orientations.apply_orientation(arr, ornt)


def _reoriented_shape(shape: tuple[int, ...], ornt: np.ndarray) -> tuple[int, int, int]:
    out = [0, 0, 0]
    for axis, (dest, _) in enumerate(ornt):
        out[int(dest)] = shape[axis]
    return tuple(out)


def _square_box(brain: np.ndarray, margin: int) -> tuple[int, int, int]:
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    side = int(max(xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1) + 2 * margin)
    cx, cy = (xs[0] + xs[-1] + 1) // 2, (ys[0] + ys[-1] + 1) // 2
    return int(cx - side // 2), int(cy - side // 2), side


def _overlap(start: int, side: int, extent: int) -> tuple[slice, slice]:
    """(slice into the crop, slice into the volume) where the crop and the volume overlap on one axis."""
    lo, hi = max(start, 0), min(start + side, extent)
    return slice(lo - start, hi - start), slice(lo, hi)


def _crop_slices(vol: np.ndarray, x0: int, y0: int, side: int, zr: tuple[int, int], dtype: type) -> np.ndarray:
    """Square crop of axial slices ``zr[0]:zr[1]`` of ``vol`` ``(X, Y, Z)`` as ``[Z', side, side]`` laid out
    ``[Y, X]``, zero outside the volume."""
    out = np.zeros((zr[1] - zr[0], side, side), dtype=dtype)
    xs, xd = _overlap(x0, side, vol.shape[0])
    ys, yd = _overlap(y0, side, vol.shape[1])
    out[:, ys, xs] = vol[xd, yd, zr[0]:zr[1]].T
    return out


def stack_context(images: np.ndarray, context: int) -> np.ndarray:
    """Slices ``[Z, C, S, S]`` (consecutive axial positions) -> ``[Z, C * (2k + 1), S, S]`` for ``k = context``:
    per modality, the slices ``z - k .. z + k`` in that order (the centre one is channel ``c * (2k + 1) + k``).
    Beyond the first and last slice with brain there is no brain, so those neighbours are 0, as the
    normalisation leaves background. ``context`` 0 returns ``images`` itself."""
    if context == 0:
        return images
    n, c = images.shape[:2]
    padded = np.zeros((n + 2 * context, *images.shape[1:]), dtype=images.dtype)
    padded[context:context + n] = images
    stacked = np.stack([padded[context + d:context + d + n] for d in range(-context, context + 1)], axis=2)
    return stacked.reshape(n, c * (2 * context + 1), *images.shape[2:])


def _zscore(crop: np.ndarray, brain: np.ndarray, clip: bool = False) -> np.ndarray:
    """Per-modality z-score over brain voxels of ``crop`` ``[Z, C, H, W]`` (in place); background stays 0.
    With ``clip``, each modality's brain voxels are first clipped to their 0.5th and 99.5th percentiles, so
    that a few extreme voxels (a scanner's bright vessels, a site's artefacts) do not set the scale.

    Outside the brain every modality is 0 (that is how the brain mask is defined), so sums over the whole
    crop are sums over the brain.
    """
    n = max(int(brain.sum()), 1)
    for c in range(crop.shape[1]):
        channel = crop[:, c]
        if clip:
            low, high = np.percentile(channel[brain], CLIP_PERCENTILES)
            np.clip(channel, low, high, out=channel)
            channel[~brain] = 0.0
        mean = float(channel.sum(dtype=np.float64)) / n
        var = float(np.square(channel, dtype=np.float64).sum()) / n - mean * mean
        std = np.sqrt(var) if var > 0 else 1.0
        channel -= mean
        channel /= std
        channel[~brain] = 0.0
    return crop


def _resize(stack: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``[N, C, size, size]``.

    No antialiasing: brain crops shrink by at most ~1.5x (about 190 -> 128), where it changes little, and
    it triples the cost of the slice stage (measured on a 240 x 240 x 155 case).
    """
    if stack.shape[-1] == size and stack.shape[-2] == size:
        return stack
    return F.interpolate(stack, size=(size, size), mode="bilinear", align_corners=False)
