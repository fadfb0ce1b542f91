"""Post-processing of predicted tumour regions, chosen on the validation split (as nnU-Net and BraTS winners do).

Per region, connected components (26-connectivity) under a volume in mm^3 are removed; then a case whose whole
enhancing tumour (ET) is under ``et_min_mm3`` has its ET relabelled necrotic core (it leaves ET, stays in TC and
WT: BraTS scores an empty ET as perfect where the reference has none); last the regions are nested as a BraTS
label map holds them: WT' = WT | TC | ET, TC' = TC | ET, ET' = ET. The thresholds are chosen on the validation
patients by :mod:`brats_seg.evaluation.choose_postprocess`."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from brats_seg.data.labels import REGIONS
from brats_seg.errors import UserError

log = logging.getLogger(__name__)

INNER = {"wt": ("tc", "et"), "tc": ("et",), "et": ()}  # regions a label map nests inside each region
_REL_TOL = 1e-9  # a volume within this (relative) of a threshold counts as reaching it


def below(mm3: float | np.ndarray, threshold_mm3: float) -> bool | np.ndarray:
    return mm3 < threshold_mm3 * (1 - _REL_TOL)


def as_mm3(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise UserError(f"post-processing {name} is {value!r}; give a finite number of mm3 >= 0 (0 keeps all).")
    return float(value)


@dataclass(frozen=True)
class PostProcess:
    """Per region, the smallest connected component kept (mm^3; 0 or absent keeps all), the total ET volume
    (mm^3) under which a case's ET is relabelled necrotic core (0 never relabels), and ``main_fraction``: after
    nesting, every tumour component (26-connected, of WT) under this fraction of the case's largest one is dropped
    from every region (0 keeps all; 1 keeps the largest alone): false tumours far from the main one."""

    min_component_mm3: dict[str, float] = field(default_factory=dict)
    et_min_mm3: float = 0.0
    main_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.min_component_mm3, Mapping):
            raise UserError(f"post-processing min_component_mm3 is {type(self.min_component_mm3).__name__}; "
                            "give a mapping from region (wt, tc, et) to mm3.")
        if (bad := next((r for r in self.min_component_mm3 if r not in REGIONS), None)) is not None:
            raise UserError(f"post-processing min_component_mm3 names unknown region {bad!r}; use "
                            f"{', '.join(REGIONS)}.")
        sizes = {r: as_mm3(self.min_component_mm3[r], f"min_component_mm3.{r}")
                 for r in REGIONS if r in self.min_component_mm3}
        object.__setattr__(self, "min_component_mm3", sizes)
        object.__setattr__(self, "et_min_mm3", as_mm3(self.et_min_mm3, "et_min_mm3"))
        fraction = self.main_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
            raise UserError(f"post-processing main_fraction is {fraction!r}; give a number from 0 (keep every "
                            "tumour component) to 1 (keep the largest alone).")
        object.__setattr__(self, "main_fraction", float(fraction))

    def to_dict(self) -> dict:
        """The settings as JSON-ready numbers: ``{"min_component_mm3": {region: mm3}, "et_min_mm3": mm3}``, with
        ``main_fraction`` where it is above 0 (so that settings without it read and write as they always did)."""
        out = {"min_component_mm3": dict(self.min_component_mm3), "et_min_mm3": self.et_min_mm3}
        return {**out, "main_fraction": self.main_fraction} if self.main_fraction > 0 else out

    @classmethod
    def from_dict(cls, d: object) -> PostProcess:
        """Settings read from JSON or a model file; anything but known regions and finite mm3 >= 0 is a UserError."""
        if not isinstance(d, Mapping):
            raise UserError(f"post-processing settings are a {type(d).__name__}; give a mapping with "
                            "min_component_mm3 and et_min_mm3.")
        if (key := next((k for k in d if k not in ("min_component_mm3", "et_min_mm3", "main_fraction")), None)) \
                is not None:
            raise UserError(f"post-processing settings have unknown key {key!r}; use min_component_mm3, "
                            "et_min_mm3 and main_fraction.")
        return cls(d.get("min_component_mm3", {}), d.get("et_min_mm3", 0.0), d.get("main_fraction", 0.0))

    def describe(self) -> str:
        """One line for people, e.g. ``WT >= 50 mm3, TC keeps all, ET >= 10 mm3; ET under 200 mm3 -> necrotic
        core``."""
        text = ", ".join(f"{r.upper()} >= {v:g} mm3" if v > 0 else f"{r.upper()} keeps all"
                         for r, v in self.min_component_mm3.items())
        more = [f"ET under {self.et_min_mm3:g} mm3 -> necrotic core"] if self.et_min_mm3 > 0 else []
        if self.main_fraction > 0:
            more.append(f"tumours under {self.main_fraction:g} x the largest dropped")
        return "; ".join(([text] if text else []) + more) or "no post-processing"


NONE = PostProcess({}, 0.0)


def checked_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Boolean masks in WT, TC, ET order (no copy for boolean input); ValueError on unknown or mismatched ones."""
    if not isinstance(masks, Mapping) or "wt" not in masks:
        raise ValueError("region masks need a whole-tumour 'wt' entry; pass a dict of boolean arrays keyed wt/tc/et.")
    if (bad := next((r for r in masks if r not in REGIONS), None)) is not None:
        raise ValueError(f"unknown region {bad!r} in the masks; use {', '.join(REGIONS)}.")
    out = {}
    for region in (r for r in REGIONS if r in masks):
        mask = np.asarray(masks[region])
        if mask.dtype.kind not in "biu":
            raise ValueError(f"the {region} mask is {mask.dtype}, not boolean; threshold it (probs >= 0.5) first.")
        out[region] = mask if mask.dtype == bool else mask != 0
    shapes = {r: m.shape for r, m in out.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"region masks differ in shape ({shapes}); give every region on the case's own grid.")
    return out


def voxel_mm3(spacing: Sequence[float], ndim: int) -> float:
    values = [float(s) for s in spacing]
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {tuple(spacing)} is not {ndim} positive sizes in mm; give one per mask axis.")
    return math.prod(values)


class Components:
    """The 26-connected components of one mask, labelled once inside its bounding box (the costly part): each
    component's volume in mm^3, and the voxels of those under ``up_to_mm3`` ordered by their component's volume,
    so that the mask for any threshold up to it is a copy with a prefix of those voxels cleared."""

    def __init__(self, mask: np.ndarray, voxel_mm3: float, up_to_mm3: float) -> None:
        self.source = mask
        nonzero = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != k)))
                   for k in range(mask.ndim)]
        box = tuple(slice(int(n[0]), int(n[-1]) + 1) if n.size else slice(0, 0) for n in nonzero)
        inside = mask[box]
        labels, count = ndimage.label(inside, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
        voxels = np.flatnonzero(inside)  # counting the tumour's voxels only: far cheaper than the whole box
        ids = labels.ravel()[voxels]
        self.volumes = np.bincount(ids, minlength=count + 1)[1:] * voxel_mm3
        pick = np.concatenate(([False], below(self.volumes, up_to_mm3)))[ids]
        volumes = self.volumes[ids[pick] - 1]
        order = np.argsort(volumes, kind="stable")
        where = np.unravel_index(voxels[pick][order], inside.shape)
        self.voxels = np.ravel_multi_index(tuple(w + b.start for w, b in zip(where, box)), mask.shape)
        self.voxel_volumes = volumes[order]

    def mask(self, min_mm3: float) -> np.ndarray:
        """A new boolean mask (the full grid) of the components of at least ``min_mm3`` (at most ``up_to_mm3``)."""
        out = self.source.copy()
        out.reshape(-1)[self.voxels[:np.count_nonzero(below(self.voxel_volumes, min_mm3))]] = False
        return out


def nest(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """New masks nested as a BraTS label map holds them: WT' = WT | TC | ET, TC' = TC | ET, ET' = ET (regions
    absent from ``masks`` stay absent)."""
    out: dict[str, np.ndarray] = {}
    inner = None
    for region in ("et", "tc", "wt"):
        if region in masks:
            out[region] = inner = masks[region].copy() if inner is None else masks[region] | inner
    return {r: out[r] for r in REGIONS if r in out}


def finish(kept: dict[str, np.ndarray], voxel_mm3: float, et_min_mm3: float) -> dict[str, np.ndarray]:
    """The ET relabelling (its voxels go to TC and WT) and the nesting, after component removal."""
    et = kept.get("et")
    if et is not None and et_min_mm3 > 0 and below(np.count_nonzero(et) * voxel_mm3, et_min_mm3):
        kept = {**kept, **{r: kept[r] | et for r in ("wt", "tc") if r in kept}, "et": np.zeros_like(et)}
    return nest(kept)


def keep_main(masks: Mapping[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """Nested masks without the tumour components (26-connected components of WT) under ``fraction`` of the
    largest one's volume, removed from every region; ``fraction`` 0 keeps all (the masks themselves)."""
    if fraction <= 0:
        return dict(masks)
    components = Components(masks["wt"], 1.0, math.inf)  # volumes in voxels: only their ratio matters
    if components.volumes.size <= 1:
        return dict(masks)
    kept = components.mask(fraction * float(components.volumes.max()))
    return {region: mask & kept for region, mask in masks.items()}


def apply(masks: Mapping[str, np.ndarray], spacing: Sequence[float], pp: PostProcess) -> dict[str, np.ndarray]:
    """Post-process one case's region masks (boolean ``[X, Y, Z]`` arrays keyed wt/tc/et, ``spacing`` in mm):
    component removal per region, the ET relabelling, nesting, then the main tumour (``pp.main_fraction``);
    returns new arrays, the input is untouched."""
    masks = checked_masks(masks)
    voxel = voxel_mm3(spacing, masks["wt"].ndim)
    sizes = {r: pp.min_component_mm3.get(r, 0.0) for r in masks}
    kept = {r: Components(m, voxel, sizes[r]).mask(sizes[r]) if sizes[r] > 0 else m for r, m in masks.items()}
    return keep_main(finish(kept, voxel, pp.et_min_mm3), pp.main_fraction)
