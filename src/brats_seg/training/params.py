"""params.yaml ``train``: what a training run is asked to do, with its learning-rate schedule; torch-free, so
that reading and checking params never imports torch."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from brats_seg.config import require, require_at_least, require_positive, runtime_field
from brats_seg.models.config import Architecture

TARGET_REGIONS = {"wt": ("wt",), "regions": ("wt", "tc", "et")}
# Sane upper bounds: beyond them a value is a typo (1e9 epochs is 30 years of 1 s epochs), refused at load.
MAXIMA = {"epochs": 100_000, "batch_size": 65_536, "base": 4096, "depth": 10}
MAX_FOLDS = 10


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """params.yaml ``train`` section."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    schedule: Literal["constant", "cosine", "poly"] = "constant"  # the learning rate over the epochs (lr_at)
    bce_weight: float = 1.0  # Dice + BCE per region: measured on real patients (README, Accuracy on real patients)
    target: Literal["wt", "regions"] = "regions"
    model: Architecture = "unet"  # the network (brats_seg.models: unet | resunet)
    base: int = 32
    depth: int = 4
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    augment: bool = True
    bias_field: float = 0.0  # augmentation: a smooth random intensity field per modality, this high (z-units)
    modality_dropout: float = 0.0  # augmentation: each modality of a sample blanked with this probability
    # Where it runs (like base.executor): the fingerprint and the run record the device it resolved to.
    device: Literal["auto", "cpu", "cuda"] = runtime_field("auto")
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    resume: bool = runtime_field(True)
    threads: int = 0  # shapes the result: CPU kernels sum in per-thread order (see fingerprint)
    nproc: int = 1
    memory_gb: float | Literal["auto"] = runtime_field("auto")  # same rows, same order in memory or streamed
    postprocess: bool = True  # choose post-processing on the validation patients (brats_seg.inference.postprocess)
    main_tumour: bool = True  # also choose there a fraction of the largest tumour under which the others go
    folds: int = 0  # 0: one network | N: an ensemble of N, member i trained without fold i of the training patients
    threshold: float | Literal["auto"] = "auto"  # a region's mask is probability > this; auto: chosen on validation
    select: Literal["dice", "lesion_dice"] = "dice"  # the epoch kept: best per-patient Dice or lesion-wise Dice

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "base", "depth"):
            require_at_least(f"train.{key}", getattr(self, key), 1)
        for key, most in MAXIMA.items():
            require(f"train.{key}", getattr(self, key), getattr(self, key) <= most, f"an integer from 1 to {most}")
        require_positive("train.lr", self.lr)
        require_at_least("train.bce_weight", self.bce_weight, 0)
        require("train.bias_field", self.bias_field, 0 <= self.bias_field <= 5,
                "a number from 0 (off) to 5 (z-score units)")
        require("train.modality_dropout", self.modality_dropout, 0 <= self.modality_dropout < 1,
                "a probability from 0 (off) to below 1")
        require_at_least("train.threads", self.threads, 0)
        require_at_least("train.nproc", self.nproc, 1)
        require("train.folds", self.folds, self.folds == 0 or 2 <= self.folds <= MAX_FOLDS,
                f"0 (one network) or a number of folds from 2 to {MAX_FOLDS} (an ensemble of that many networks)")
        require("train.batch_size", self.batch_size, self.batch_size % self.nproc == 0,
                f"a multiple of train.nproc ({self.nproc}): each process trains on an equal part of every batch")
        if self.memory_gb != "auto":
            require_at_least("train.memory_gb", self.memory_gb, 0)
        if self.threshold != "auto":
            require("train.threshold", self.threshold, 0 < self.threshold < 1,
                    "'auto' (chosen on the validation patients) or a probability between 0 and 1 (exclusive)")
        require("train.base", self.base, self.norm != "group" or self.base in (1, 2, 4) or self.base % 8 == 0,
                "1, 2, 4 or a multiple of 8 when train.norm is 'group' (GroupNorm splits channels into 8 groups)")


def lr_at(params: TrainParams, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based): ``lr`` throughout (constant), or decayed from ``lr`` at the
    first epoch towards 0 after the last, by half a cosine (cosine) or nnU-Net's polynomial ``(1 - e / E) ** 0.9``
    (poly). A function of the epoch alone, so a resumed run goes on exactly where it stopped."""
    progress = epoch / params.epochs
    if params.schedule == "cosine":
        return params.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if params.schedule == "poly":
        return params.lr * (1.0 - progress) ** 0.9
    return params.lr


def model_params(params: TrainParams, slice_params: dict, seed: int) -> dict:
    """The parameters that made a model, as logged to its run (and compared by `brats-seg lineage --verify`)."""
    return {"train": dataclasses.asdict(params), "slice": slice_params, "seed": seed}
