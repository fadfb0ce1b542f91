"""params.yaml ``slice`` (:class:`SliceParams`) and the part of it a model is bound to (:class:`SliceSpec`): what
turns a case into a model's input, typed from the slice stage to the model file.

The slice stage writes its settings to ``meta.json``; the train stage stores them in the model file; predict,
rescore and the registered model read them back as a :class:`SliceSpec`. Older model files, written before
``context`` and ``normalise`` existed, read as ``context: 0`` and ``normalise: zscore``: what made them.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

from brats_seg.config import require, require_at_least, require_fraction, runtime_field
from brats_seg.data.layouts import MODALITIES
from brats_seg.errors import ConfigError

Normalisation = Literal["zscore", "clip"]
NORMALISATIONS: tuple[str, ...] = typing.get_args(Normalisation)
MAX_CONTEXT = 8


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """``size`` x ``size`` axial slices of ``modalities`` cropped to the brain with ``margin`` voxels, normalised
    by ``normalise`` (zscore: over the brain; clip: the brain's 0.5th to 99.5th percentile first), each with the
    ``context`` slices above and below it as extra channels (2.5D)."""

    size: int = 128
    margin: int = 4
    modalities: tuple[str, ...] = MODALITIES
    context: int = 0
    normalise: Normalisation = "zscore"

    @property
    def channels(self) -> int:
        """Input channels of a model of this spec: per modality, the slice and its ``2 * context`` neighbours."""
        return len(self.modalities) * (2 * self.context + 1)

    def channel_names(self) -> list[str]:
        """One name per input channel, in order: ``flair`` for a slice, ``flair@-1`` for the one below it."""
        offsets = range(-self.context, self.context + 1)
        return [m if d == 0 else f"{m}@{d:+d}" for m in self.modalities for d in offsets]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SliceSpec:
        """The spec in a ``slice`` record (meta.json, a model file); checked with :func:`spec_problem` first."""
        return cls(size=int(record["size"]), margin=int(record["margin"]), modalities=tuple(record["modalities"]),
                   context=int(record.get("context", 0)), normalise=record.get("normalise", "zscore"))


@dataclasses.dataclass(frozen=True)
class SliceParams:
    """params.yaml ``slice`` section."""

    size: int = 128
    modalities: tuple[str, ...] = MODALITIES
    margin: int = 4
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    folds: int = 0  # 0: split by slice.split; k >= 3: k-fold cross-validation by the same hash (slice.fold tests)
    fold: int = 0
    keep_empty_fraction: float = 0.1
    context: int = 0  # 2.5D: the slices above and below each slice as extra channels, per modality
    normalise: Normalisation = "zscore"  # zscore over the brain | clip: the brain's 0.5-99.5th percentiles first
    workers: int = runtime_field(0)

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"params.yaml: slice.modalities must name each of some of {', '.join(MODALITIES)} "
                              f"once, got {list(self.modalities)}.")
        split_ok = min(self.split) >= 0 and self.split[0] > 0 and abs(sum(self.split) - 1.0) <= 1e-6
        require("slice.split", list(self.split), split_ok, "three fractions (train, val, test) that are not "
                "negative and sum to 1, with train above 0")
        require("slice.size", self.size, 8 <= self.size <= 1024, "an integer from 8 to 1024 (BraTS slices are "
                "240 x 240 voxels; slices are resized to slice.size x slice.size)")
        require_at_least("slice.margin", self.margin, 0)
        require("slice.folds", self.folds, self.folds == 0 or 3 <= self.folds <= 100,
                "0 (split by slice.split) or a number of folds from 3 to 100 (one tests, the next validates)")
        require("slice.fold", self.fold, 0 <= self.fold < max(self.folds, 1),
                f"the fold to test, from 0 to slice.folds - 1 ({max(self.folds - 1, 0)})")
        require_fraction("slice.keep_empty_fraction", self.keep_empty_fraction)
        require("slice.context", self.context, 0 <= self.context <= MAX_CONTEXT,
                f"an integer from 0 (each slice alone) to {MAX_CONTEXT} (slices above and below as extra channels)")
        require_at_least("slice.workers", self.workers, 0)

    @property
    def spec(self) -> SliceSpec:
        """What turns a case into the model's input (what the model file carries)."""
        return SliceSpec(self.size, self.margin, self.modalities, self.context, self.normalise)


def spec_problem(record: object, in_channels: int, step: int) -> str | None:
    """What is wrong with a ``slice`` record for a model of ``in_channels`` inputs whose slice side must be a
    multiple of ``step``, as a clause ("an invalid slice size 7 (...)"); None when it can be used as it is."""
    if not (isinstance(record, Mapping) and {"size", "margin", "modalities"} <= set(record)):
        return f"invalid slice settings {record!r} (size, margin and modalities)"
    size, margin, modalities = record["size"], record["margin"], record["modalities"]
    context, normalise = record.get("context", 0), record.get("normalise", "zscore")
    if not (_is_int(size) and 8 <= size <= 1024 and size % step == 0):
        return f"an invalid slice size {size!r} (an integer from 8 to 1024, a multiple of 2**depth = {step})"
    if not (_is_int(margin) and 0 <= margin <= 1024):
        return f"an invalid slice margin {margin!r} (an integer from 0 to 1024)"
    if not (_is_int(context) and 0 <= context <= MAX_CONTEXT):
        return f"an invalid slice context {context!r} (an integer from 0 to {MAX_CONTEXT})"
    if normalise not in NORMALISATIONS:
        return f"an invalid normalisation {normalise!r} ({' or '.join(NORMALISATIONS)})"
    if not (isinstance(modalities, (list, tuple)) and modalities and all(isinstance(m, str) for m in modalities)
            and len(set(modalities)) == len(modalities)
            and len(modalities) * (2 * context + 1) == in_channels):
        return (f"invalid modalities {modalities!r} with context {context} (distinct names; their number times "
                f"2 * context + 1 is the model's {in_channels} input channels)")
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
