"""Choosing post-processing (:mod:`brats_seg.inference.postprocess`) on the validation patients: per region the
smallest connected component kept, and ET's relabel volume, each maximising the mean of a per-case score; greedily
from the inside out (ET, TC, WT: a label map nests each region in the next, so a speck left in ET stays in TC and
WT whatever their own sizes); a threshold above 0 is taken only when it strictly beats 0."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from brats_seg.data.labels import REGIONS, region_mask
from brats_seg.errors import UserError
from brats_seg.inference.postprocess import (
    INNER,
    Components,
    PostProcess,
    as_mm3,
    below,
    checked_masks,
    finish,
    keep_main,
    voxel_mm3,
)
from brats_seg.progress import progress

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray, np.ndarray, tuple[float, ...]], float]
Case = tuple[Mapping[str, np.ndarray], np.ndarray, Sequence[float]]
SIZE_CANDIDATES_MM3 = (0, 10, 25, 50, 100, 250, 500, 1000)
ET_CANDIDATES_MM3 = (0, 50, 100, 200, 500, 1000)
# Fractions of the largest tumour component under which the others go (train.main_tumour; 0 is always tried).
MAIN_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Probability thresholds tried by train.threshold: auto (0.5, the default threshold, wins ties).
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` picked, and the mean score per region over the validation cases: ``before`` on the
    raw masks (nested), ``after`` with ``postprocess`` applied, ``tried`` per candidate (mm3 -> mean) at the
    time each region was chosen (keys wt, tc, et, and et_relabel for the ET relabel threshold; threshold, the
    mean over regions of ``after`` per probability threshold, where :func:`choose_threshold` chose it), and the
    probability threshold the masks were made with."""

    postprocess: PostProcess
    before: dict[str, float]
    after: dict[str, float]
    tried: dict[str, dict[float, float]]
    threshold: float = DEFAULT_THRESHOLD

    def to_dict(self) -> dict:
        """JSON-ready numbers (candidate keys written as strings)."""
        return {"postprocess": self.postprocess.to_dict(), "threshold": self.threshold, "before": dict(self.before),
                "after": dict(self.after),
                "tried": {k: {f"{c:g}": s for c, s in v.items()} for k, v in self.tried.items()}}


def _candidates(values: Sequence[float], name: str) -> list[float]:
    """Sorted distinct candidates (mm3), 0 first: a threshold must beat doing nothing."""
    return sorted({0.0, *(as_mm3(v, f"{name} candidate") for v in values)})


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
    comps: Components


def _case_table(case: Case, region: str, score: Score, candidates: list[float],
                done: dict[str, np.ndarray]) -> _Table:
    """Score every candidate for ``region`` on the nested masks (the regions inside it as already chosen: ``done``,
    else raw); candidates that remove the same components share one score."""
    masks, ref_labels, spacing = case
    ref = region_mask(ref_labels, region)
    inner = [done.get(r, masks[r]) for r in INNER[region] if r in masks]
    rest = np.logical_or.reduce(inner) if inner else None
    comps = Components(masks[region], voxel_mm3(spacing, ref.ndim), candidates[-1])
    cache: dict[int, float] = {}
    scores = []
    for min_mm3 in candidates:
        key = int(np.count_nonzero(below(comps.volumes, min_mm3)))  # the same count means the same mask
        if key not in cache:
            pred = comps.mask(min_mm3)
            cache[key] = float(score(pred if rest is None else pred | rest, ref, spacing))
        scores.append(cache[key])
    kept = [float(comps.volumes[~below(comps.volumes, c)].sum()) for c in candidates]
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
        masks = checked_masks(masks)
        if (missing := next((r for r in regions if r not in masks), None)) is not None:
            raise ValueError(f"case {i} has no {missing} mask; predict every region that is to be chosen.")
        if np.shape(ref) != masks["wt"].shape:
            raise ValueError(f"case {i}'s reference is {np.shape(ref)} but its masks are {masks['wt'].shape}; "
                             "give both on the case's own grid.")
        voxel_mm3(spacing, masks["wt"].ndim)
        checked.append((masks, np.asarray(ref), tuple(float(s) for s in spacing)))
    return checked, [r for r in REGIONS if r in regions]


def _finished(cases: list[Case], pp: PostProcess, tables: dict[str, list]) -> list[dict[str, np.ndarray]]:
    """Each case's masks with ``pp``'s sizes and ET relabelling applied and nested (not ``main_fraction``), from
    the labellings ``choose`` made (no new ones)."""
    out = []
    for i, (masks, ref, spacing) in enumerate(cases):
        kept = {r: tables[r][i].comps.mask(pp.min_component_mm3[r]) if r in tables else m for r, m in masks.items()}
        out.append(finish(kept, voxel_mm3(spacing, ref.ndim), pp.et_min_mm3))
    return out


def _mean_after(cases: list[Case], score: Score, pp: PostProcess, tables: dict[str, list],
                finished: list[dict[str, np.ndarray]] | None = None) -> dict[str, float]:
    """Mean score per chosen region with ``pp`` applied (``finished``: :func:`_finished` of ``pp``, if made)."""
    totals = dict.fromkeys(tables, 0.0)
    for (_, ref, spacing), done in zip(cases, finished or _finished(cases, pp, tables)):
        out = keep_main(done, pp.main_fraction)
        for r in tables:
            totals[r] += float(score(out[r], region_mask(ref, r), spacing))
    return {r: totals[r] / len(cases) for r in tables}


def _main_fraction(cases: list[Case], score: Score, pp: PostProcess, tables: dict[str, list],
                   candidates: list[float], tried: dict[str, dict[float, float]]) -> float:
    """The tumour-component fraction (:func:`~brats_seg.inference.postprocess.keep_main`) maximising the mean over
    cases of the regions' mean score, on top of ``pp``; ties (and anything not strictly better than 0) go to the
    smaller. Records each candidate's mean in ``tried["main_fraction"]``."""
    finished = _finished(cases, pp, tables)
    means = [float(np.mean(list(_mean_after(cases, score, dataclasses.replace(pp, main_fraction=f), tables,
                                            finished).values()))) for f in candidates]
    tried["main_fraction"] = dict(zip(candidates, means))
    return _best(candidates, means)


def choose(cases: Sequence[Case], score: Score, regions: Sequence[str] = ("wt", "tc", "et"),
           candidates_mm3: Sequence[float] = SIZE_CANDIDATES_MM3,
           et_candidates_mm3: Sequence[float] = ET_CANDIDATES_MM3, main_fractions: Sequence[float] = (),
           log_level: int = logging.INFO, bar: bool = True) -> Choice:
    """Choose a :class:`PostProcess` on validation ``cases``: ``(masks, ref_labels, spacing)``, the raw predicted
    boolean masks ``[X, Y, Z]``, the canonical uint8 reference label map of that shape and the spacing in mm;
    ``score(pred_mask, ref_mask, spacing)`` is the per-case metric to maximise. Greedily ET, TC, WT (those in
    ``regions``; inner first, since nesting puts what an inner region keeps into the outer ones): the
    smallest-component size maximising the region's mean score on the nested masks, the inner regions as chosen
    (ties: the smaller); ET's relabel threshold maximising ET's mean; with ``main_fractions`` (candidates in
    [0, 1]), last the fraction of the largest tumour under which components are dropped, maximising the mean over
    the regions. Each case and region is labelled once; the choice is logged at ``log_level``, its progress shown
    unless ``bar`` is false (a caller that shows its own)."""
    cases, order = _checked_cases(cases, regions)
    order = order[::-1]
    done: list[dict[str, np.ndarray]] = [{} for _ in cases]
    sizes = _candidates(candidates_mm3, "candidates_mm3")
    thresholds = _candidates(et_candidates_mm3, "et_candidates_mm3")
    chosen: dict[str, float] = {}
    tried: dict[str, dict[float, float]] = {}
    tables: dict[str, list[_Table]] = {}
    with progress(total=len(cases) * len(order), desc="choose post-processing", unit="case", disable=not bar) as shown:
        for region in order:
            tables[region] = []
            for case, kept in zip(cases, done):
                tables[region].append(_case_table(case, region, score, sizes, kept))
                shown.update(1)
            means = [float(np.mean([t.scores[i] for t in tables[region]])) for i in range(len(sizes))]
            chosen[region] = _best(sizes, means)
            tried[region] = dict(zip(sizes, means))
            for table, kept in zip(tables[region], done):
                kept[region] = table.comps.mask(chosen[region])
    if "et" in order:  # the relabel threshold, on the ET kept at the chosen size: no new masks, no new scores
        j = sizes.index(chosen["et"])
        relabel = [float(np.mean([t.empty if below(t.kept_mm3[j], thr) else t.scores[j] for t in tables["et"]]))
                   for thr in thresholds]
        tried["et_relabel"] = dict(zip(thresholds, relabel))
    et_min = _best(thresholds, relabel) if "et" in order else 0.0
    pp = PostProcess({r: chosen[r] for r in REGIONS if r in chosen}, et_min)
    if main_fractions:
        fractions = sorted({0.0, *(float(PostProcess(main_fraction=f).main_fraction) for f in main_fractions)})
        pp = dataclasses.replace(pp, main_fraction=_main_fraction(cases, score, pp, tables, fractions, tried))
    before = _mean_after(cases, score, PostProcess(dict.fromkeys(order, 0.0), 0.0), tables)  # raw, nested
    order = [r for r in REGIONS if r in order]
    after = _mean_after(cases, score, pp, tables)
    change = ", ".join(f"{r.upper()} {before[r]:.4f} -> {after[r]:.4f}" for r in order)
    log.log(log_level, "post-processing chosen on %d validation cases: %s (mean %s %s)", len(cases), pp.describe(),
            getattr(score, "label", "score"), change)
    return Choice(pp, before, after, tried)


def choose_threshold(cases_at: Callable[[float], Sequence[Case]], score: Score, thresholds: Sequence[float],
                     **options) -> Choice:
    """The probability threshold, and the post-processing at it, maximising the mean over regions of the
    post-processed mean score: ``cases_at(t)`` gives the validation cases with their masks made at threshold
    ``t``, and :func:`choose` (given ``options``) chooses the post-processing of each; the default threshold
    (0.5) is always tried and wins ties (a threshold is taken only when it strictly beats it). One threshold for
    every region: a label map nests them, so a region's threshold moves the voxels of those around it."""
    if any(isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 < t < 1 for t in thresholds):
        raise UserError(f"probability thresholds {tuple(thresholds)} are not all numbers between 0 and 1; give "
                        "thresholds such as 0.4, 0.5, 0.6.")
    candidates = [DEFAULT_THRESHOLD, *sorted({float(t) for t in thresholds} - {DEFAULT_THRESHOLD})]
    choices = {t: choose(cases_at(t), score, **options, log_level=logging.DEBUG, bar=False)
               for t in progress(candidates, desc="choose threshold and post-processing", unit="threshold")}
    means = {t: float(np.mean(list(c.after.values()))) for t, c in choices.items()}
    best = DEFAULT_THRESHOLD
    for t in candidates:  # strictly better only: ties keep the default (first), then the lower threshold
        if means[t] > means[best]:
            best = t
    chosen = choices[best]
    log.info("probability threshold %g and post-processing %s chosen on the validation cases (mean score per "
             "threshold %s)", best, chosen.postprocess.describe(),
             ", ".join(f"{t:g}: {means[t]:.4f}" for t in sorted(means)))
    return dataclasses.replace(chosen, threshold=best, tried={**chosen.tried, "threshold": dict(sorted(means.items()))})
