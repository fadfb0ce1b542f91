"""Post-processing of predicted tumour regions, chosen on the validation split (as nnU-Net and BraTS winners do).

Per region, connected components (26-connectivity) under a volume in mm^3 are removed; then a case whose whole
enhancing tumour (ET) is under ``et_min_mm3`` has its ET relabelled necrotic core (it leaves ET, stays in TC and
WT: BraTS scores an empty ET as perfect where the reference has none); last the regions are nested as a BraTS
label map holds them: WT' = WT | TC | ET, TC' = TC | ET, ET' = ET. :func:`choose` picks the thresholds on the
validation split, greedily from the inside out (ET, TC, WT: a label map nests each region in the next, so a speck
left in ET stays in TC and WT whatever their own sizes); a threshold above 0 is taken only when it strictly beats
0."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from brats_seg.data.labels import REGIONS, region_mask
from brats_seg.errors import UserError
from brats_seg.progress import progress

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray, np.ndarray, tuple[float, ...]], float]
Case = tuple[Mapping[str, np.ndarray], np.ndarray, Sequence[float]]
SIZE_CANDIDATES_MM3 = (0, 10, 25, 50, 100, 250, 500, 1000)
ET_CANDIDATES_MM3 = (0, 50, 100, 200, 500, 1000)
_INNER = {"wt": ("tc", "et"), "tc": ("et",), "et": ()}  # regions a label map nests inside each region
_REL_TOL = 1e-9  # a volume within this (relative) of a threshold counts as reaching it


def _below(mm3: float | np.ndarray, threshold_mm3: float) -> bool | np.ndarray:
    return mm3 < threshold_mm3 * (1 - _REL_TOL)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise UserError(f"post-processing {name} is {value!r}; give a finite number of mm3 >= 0 (0 keeps all).")
    return float(value)


@dataclass(frozen=True)
class PostProcess:
    """Per region, the smallest connected component kept (mm^3; 0 or absent keeps all), and the total ET volume
    (mm^3) under which a case's ET is relabelled necrotic core (0 never relabels)."""

    min_component_mm3: dict[str, float] = field(default_factory=dict)
    et_min_mm3: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.min_component_mm3, Mapping):
            raise UserError(f"post-processing min_component_mm3 is {type(self.min_component_mm3).__name__}; "
                            "give a mapping from region (wt, tc, et) to mm3.")
        if (bad := next((r for r in self.min_component_mm3 if r not in REGIONS), None)) is not None:
            raise UserError(f"post-processing min_component_mm3 names unknown region {bad!r}; use "
                            f"{', '.join(REGIONS)}.")
        sizes = {r: _number(self.min_component_mm3[r], f"min_component_mm3.{r}")
                 for r in REGIONS if r in self.min_component_mm3}
        object.__setattr__(self, "min_component_mm3", sizes)
        object.__setattr__(self, "et_min_mm3", _number(self.et_min_mm3, "et_min_mm3"))

    def to_dict(self) -> dict:
        """The settings as JSON-ready numbers: ``{"min_component_mm3": {region: mm3}, "et_min_mm3": mm3}``."""
        return {"min_component_mm3": dict(self.min_component_mm3), "et_min_mm3": self.et_min_mm3}

    @classmethod
    def from_dict(cls, d: object) -> PostProcess:
        """Settings read from JSON or a model file; anything but known regions and finite mm3 >= 0 is a UserError."""
        if not isinstance(d, Mapping):
            raise UserError(f"post-processing settings are a {type(d).__name__}; give a mapping with "
                            "min_component_mm3 and et_min_mm3.")
        if (key := next((k for k in d if k not in ("min_component_mm3", "et_min_mm3")), None)) is not None:
            raise UserError(f"post-processing settings have unknown key {key!r}; use min_component_mm3 and "
                            "et_min_mm3.")
        return cls(d.get("min_component_mm3", {}), d.get("et_min_mm3", 0.0))

    def describe(self) -> str:
        """One line for people, e.g. ``WT >= 50 mm3, TC keeps all, ET >= 10 mm3; ET under 200 mm3 -> necrotic
        core``."""
        text = ", ".join(f"{r.upper()} >= {v:g} mm3" if v > 0 else f"{r.upper()} keeps all"
                         for r, v in self.min_component_mm3.items())
        if self.et_min_mm3 > 0:
            relabel = f"ET under {self.et_min_mm3:g} mm3 -> necrotic core"
            return f"{text}; {relabel}" if text else relabel
        return text or "no post-processing"


NONE = PostProcess({}, 0.0)


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` picked, and the mean score per region over the validation cases: ``before`` on the
    raw masks (nested), ``after`` with ``postprocess`` applied, ``tried`` per candidate (mm3 -> mean) at the
    time each region was chosen (keys wt, tc, et, and et_relabel for the ET relabel threshold)."""

    postprocess: PostProcess
    before: dict[str, float]
    after: dict[str, float]
    tried: dict[str, dict[float, float]]

    def to_dict(self) -> dict:
        """JSON-ready numbers (candidate keys written as strings)."""
        return {"postprocess": self.postprocess.to_dict(), "before": dict(self.before), "after": dict(self.after),
                "tried": {k: {f"{c:g}": s for c, s in v.items()} for k, v in self.tried.items()}}


def _checked_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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


def _voxel_mm3(spacing: Sequence[float], ndim: int) -> float:
    values = [float(s) for s in spacing]
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {tuple(spacing)} is not {ndim} positive sizes in mm; give one per mask axis.")
    return math.prod(values)


class _Components:
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
        pick = np.concatenate(([False], _below(self.volumes, up_to_mm3)))[ids]
        volumes = self.volumes[ids[pick] - 1]
        order = np.argsort(volumes, kind="stable")
        where = np.unravel_index(voxels[pick][order], inside.shape)
        self.voxels = np.ravel_multi_index(tuple(w + b.start for w, b in zip(where, box)), mask.shape)
        self.voxel_volumes = volumes[order]

    def mask(self, min_mm3: float) -> np.ndarray:
        """A new boolean mask (the full grid) of the components of at least ``min_mm3`` (at most ``up_to_mm3``)."""
        out = self.source.copy()
        out.reshape(-1)[self.voxels[:np.count_nonzero(_below(self.voxel_volumes, min_mm3))]] = False
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


def _finish(kept: dict[str, np.ndarray], voxel_mm3: float, et_min_mm3: float) -> dict[str, np.ndarray]:
    """The ET relabelling (its voxels go to TC and WT) and the nesting, after component removal."""
    et = kept.get("et")
    if et is not None and et_min_mm3 > 0 and _below(np.count_nonzero(et) * voxel_mm3, et_min_mm3):
        kept = {**kept, **{r: kept[r] | et for r in ("wt", "tc") if r in kept}, "et": np.zeros_like(et)}
    return nest(kept)


def apply(masks: Mapping[str, np.ndarray], spacing: Sequence[float], pp: PostProcess) -> dict[str, np.ndarray]:
    """Post-process one case's region masks (boolean ``[X, Y, Z]`` arrays keyed wt/tc/et, ``spacing`` in mm):
    component removal per region, the ET relabelling, then nesting; returns new arrays, the input is untouched."""
    masks = _checked_masks(masks)
    voxel = _voxel_mm3(spacing, masks["wt"].ndim)
    sizes = {r: pp.min_component_mm3.get(r, 0.0) for r in masks}
    kept = {r: _Components(m, voxel, sizes[r]).mask(sizes[r]) if sizes[r] > 0 else m for r, m in masks.items()}
    return _finish(kept, voxel, pp.et_min_mm3)


def _candidates(values: Sequence[float], name: str) -> list[float]:
    """Sorted distinct candidates (mm3), 0 first: a threshold must beat doing nothing."""
    return sorted({0.0, *(_number(v, f"{name} candidate") for v in values)})


def _best(candidates: list[float], means: list[float]) -> float:
    """The candidate with the highest mean; ties (and anything not strictly better than 0) go to the smaller."""
    best = 0
    for i, mean in enumerate(means):
        if mean > means[best]:
            best = i
    return candidates[best]


class _Table(NamedTuple):  # one case and region
    scores: list[float]  # per candidate size
    kept_mm3: list[float]  # the volume kept per candidate size
    empty: float  # the score of an empty mask (ET only, for the relabelling; NaN otherwise)
    comps: _Components


def _case_table(case: Case, region: str, score: Score, candidates: list[float],
                done: dict[str, np.ndarray]) -> _Table:
    """Score every candidate for ``region`` on the nested masks (the regions inside it as already chosen: ``done``,
    else raw); candidates that remove the same components share one score."""
    masks, ref_labels, spacing = case
    ref = region_mask(ref_labels, region)
    inner = [done.get(r, masks[r]) for r in _INNER[region] if r in masks]
    rest = np.logical_or.reduce(inner) if inner else None
    comps = _Components(masks[region], _voxel_mm3(spacing, ref.ndim), candidates[-1])
    cache: dict[int, float] = {}
    scores = []
    for min_mm3 in candidates:
        key = int(np.count_nonzero(_below(comps.volumes, min_mm3)))  # the same count means the same mask
        if key not in cache:
            pred = comps.mask(min_mm3)
            cache[key] = float(score(pred if rest is None else pred | rest, ref, spacing))
        scores.append(cache[key])
    kept = [float(comps.volumes[~_below(comps.volumes, c)].sum()) for c in candidates]
    empty = float(score(np.zeros(ref.shape, dtype=bool), ref, spacing)) if region == "et" else math.nan
    return _Table(scores, kept, empty, comps)


def _checked_cases(cases: Sequence[Case], regions: Sequence[str]) -> tuple[list[Case], list[str]]:
    if not regions or any(r not in REGIONS for r in regions):
        raise ValueError(f"regions {tuple(regions)} are not a choice of {', '.join(REGIONS)}; name at least one.")
    if not cases:
        raise UserError("choosing post-processing needs validation cases and got none; put cases in the "
                        "validation split or skip post-processing.")
    checked = []
    for i, (masks, ref, spacing) in enumerate(cases):
        masks = _checked_masks(masks)
        if (missing := next((r for r in regions if r not in masks), None)) is not None:
            raise ValueError(f"case {i} has no {missing} mask; predict every region that is to be chosen.")
        if np.shape(ref) != masks["wt"].shape:
            raise ValueError(f"case {i}'s reference is {np.shape(ref)} but its masks are {masks['wt'].shape}; "
                             "give both on the case's own grid.")
        _voxel_mm3(spacing, masks["wt"].ndim)
        checked.append((masks, np.asarray(ref), tuple(float(s) for s in spacing)))
    return checked, [r for r in REGIONS if r in regions]


def _mean_after(cases: list[Case], score: Score, pp: PostProcess, tables: dict[str, list]) -> dict[str, float]:
    """Mean score per chosen region with ``pp`` applied, from the labellings ``choose`` made (no new ones)."""
    totals = dict.fromkeys(tables, 0.0)
    for i, (masks, ref, spacing) in enumerate(cases):
        kept = {r: tables[r][i].comps.mask(pp.min_component_mm3[r]) if r in tables else m for r, m in masks.items()}
        out = _finish(kept, _voxel_mm3(spacing, ref.ndim), pp.et_min_mm3)
        for r in tables:
            totals[r] += float(score(out[r], region_mask(ref, r), spacing))
    return {r: totals[r] / len(cases) for r in tables}


def choose(cases: Sequence[Case], score: Score, regions: Sequence[str] = ("wt", "tc", "et"),
           candidates_mm3: Sequence[float] = SIZE_CANDIDATES_MM3,
           et_candidates_mm3: Sequence[float] = ET_CANDIDATES_MM3) -> Choice:
    """Choose a :class:`PostProcess` on validation ``cases``: ``(masks, ref_labels, spacing)``, the raw predicted
    boolean masks ``[X, Y, Z]``, the canonical uint8 reference label map of that shape and the spacing in mm;
    ``score(pred_mask, ref_mask, spacing)`` is the per-case metric to maximise. Greedily ET, TC, WT (those in
    ``regions``; inner first, since nesting puts what an inner region keeps into the outer ones): the
    smallest-component size maximising the region's mean score on the nested masks, the inner regions as chosen
    (ties: the smaller); ET's relabel threshold maximising ET's mean. Each case and region is labelled once."""
    cases, order = _checked_cases(cases, regions)
    order = order[::-1]
    done: list[dict[str, np.ndarray]] = [{} for _ in cases]
    sizes = _candidates(candidates_mm3, "candidates_mm3")
    thresholds = _candidates(et_candidates_mm3, "et_candidates_mm3")
    chosen: dict[str, float] = {}
    tried: dict[str, dict[float, float]] = {}
    tables: dict[str, list[_Table]] = {}
    with progress(total=len(cases) * len(order), desc="choose post-processing", unit="case") as bar:
        for region in order:
            tables[region] = []
            for case, kept in zip(cases, done):
                tables[region].append(_case_table(case, region, score, sizes, kept))
                bar.update(1)
            means = [float(np.mean([t.scores[i] for t in tables[region]])) for i in range(len(sizes))]
            chosen[region] = _best(sizes, means)
            tried[region] = dict(zip(sizes, means))
            for table, kept in zip(tables[region], done):
                kept[region] = table.comps.mask(chosen[region])
    if "et" in order:  # the relabel threshold, on the ET kept at the chosen size: no new masks, no new scores
        j = sizes.index(chosen["et"])
        relabel = [float(np.mean([t.empty if _below(t.kept_mm3[j], thr) else t.scores[j] for t in tables["et"]]))
                   for thr in thresholds]
        tried["et_relabel"] = dict(zip(thresholds, relabel))
    et_min = _best(thresholds, relabel) if "et" in order else 0.0
    pp = PostProcess({r: chosen[r] for r in REGIONS if r in chosen}, et_min)
    before = _mean_after(cases, score, PostProcess(dict.fromkeys(order, 0.0), 0.0), tables)  # raw, nested
    order = [r for r in REGIONS if r in order]
    after = _mean_after(cases, score, pp, tables)
    log.info("post-processing chosen on %d validation cases: %s (mean %s)", len(cases), pp.describe(),
             ", ".join(f"{r.upper()} {before[r]:.4f} -> {after[r]:.4f}" for r in order))
    return Choice(pp, before, after, tried)
