"""The number the promotion gate compares (params.yaml ``promote.metric``), from a version's tags or from a
re-score's per-case rows.

A metric is the per-patient mean over the test cases of one kind of score, for one region (``wt_dice``,
``et_lesion_dice``, ...) or averaged over the model's regions (``dice``, ``lesion_dice``, ``lesion_pq``: the mean
of the regions' means). ``lesion_dice`` is the BraTS lesion-wise Dice with every lesion counted, missed and false
ones as 0 (:func:`brats_seg.evaluation.evaluate.lesion_columns`); ``lesion_pq`` is panoptica's ``pq_dsc``. ``auto`` is
``lesion_dice`` for a model of several regions (the BraTS ranking since 2023,
:mod:`brats_seg.evaluation.lesionwise`) and
``wt_dice`` for a whole-tumour model (the seed's gate).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from brats_seg.data.labels import REGIONS
from brats_seg.evaluation.metrics import summarise

if TYPE_CHECKING:  # a frame brings its own pandas: checking promote.metric needs none
    import pandas as pd

KINDS = {"dice": "Dice", "lesion_dice": "lesion-wise Dice", "lesion_pq": "lesion-wise panoptic quality"}
AUTO = "auto"
METRICS: tuple[str, ...] = (AUTO, *KINDS, *(f"{r}_{k}" for r in REGIONS for k in KINDS))


def resolve(metric: str, regions: tuple[str, ...] | list[str]) -> str:
    """``metric`` with ``auto`` made concrete for a model of ``regions``."""
    if metric != AUTO:
        return metric
    return "lesion_dice" if len(regions) > 1 else "wt_dice"


def parts(metric: str, regions: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """The (region, kind) means that ``metric`` averages for a model of ``regions``."""
    metric = resolve(metric, regions)
    if metric in KINDS:
        return [(r, metric) for r in regions]
    region, _, kind = metric.partition("_")
    return [(region, kind)]


def describe(metric: str, regions: tuple[str, ...] | list[str]) -> str:
    """``WT Dice``, ``mean lesion-wise Dice of WT, TC, ET``: the metric as the gate's reasons say it."""
    metric = resolve(metric, regions)
    if metric in KINDS:
        return f"mean {KINDS[metric]} of {', '.join(r.upper() for r in regions)}"
    region, _, kind = metric.partition("_")
    return f"{region.upper()} {KINDS[kind]}"


def label(metric: str) -> str:
    """A resolved metric as a person reads it, without the regions: ``WT Dice``, ``mean lesion-wise Dice``."""
    if metric in KINDS:
        return f"mean {KINDS[metric]}"
    region, _, kind = metric.partition("_")
    return f"{region.upper()} {KINDS.get(kind, kind)}"


def tag(region: str, kind: str) -> str:
    """The version tag register writes for a region's per-patient mean of ``kind`` (``test_wt_dice_mean``)."""
    return f"test_{region}_{kind}_mean"


def version_regions(tags: dict[str, str]) -> tuple[str, ...]:
    """The regions a registered version segments: its ``regions`` tag, or (versions registered before it was
    written) the regions it has test Dice tags for."""
    if tags.get("regions"):
        return tuple(tags["regions"].split(","))
    return tuple(r for r in REGIONS if tag(r, "dice") in tags) or ("wt",)


def missing(metric: str, regions: tuple[str, ...] | list[str], have: tuple[str, ...] | list[str]) -> list[str]:
    """The regions ``metric`` (resolved for ``regions``) needs that a model of ``have`` does not segment."""
    needed = {r for r, _ in parts(metric, regions)}
    return [r for r in REGIONS if r in needed and r not in have]


def from_tags(tags: dict[str, str], metric: str, regions: tuple[str, ...] | list[str]) -> float:
    """The metric from a version's test tags; NaN when one of them was not recorded."""
    values = [float(tags.get(tag(r, k), "nan")) for r, k in parts(metric, regions)]
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)


def from_frame(frame: pd.DataFrame, metric: str, regions: tuple[str, ...] | list[str]) -> float:
    """The metric from per-case rows (:func:`brats_seg.evaluation.evaluate.score_case`'s columns)."""
    values = [summarise(frame.loc[frame["region"] == r, k].tolist())["mean"] for r, k in parts(metric, regions)]
    return math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
