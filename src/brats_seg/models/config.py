"""The model's config: which architecture and its sizes, the typed contract that goes from params.yaml's ``train``
section into the model file and the registry, and back out to :func:`brats_seg.models.build` (torch-free)."""

from __future__ import annotations

import dataclasses
from typing import Literal

Norm = Literal["batch", "instance", "group", "none"]
# Every architecture :func:`brats_seg.models.build` knows (``train.model``); each is a 2D encoder-decoder that maps
# ``[N, in_channels, H, W]`` to logits ``[N, out_channels, H, W]`` for H and W divisible by ``2 ** depth``.
Architecture = Literal["unet", "resunet"]
DESCRIPTIONS = {"unet": "2D U-Net", "resunet": "2D residual U-Net"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and sizes. ``base``: channels of the first level, doubled per level; ``depth``: poolings.
    Model files written before ``architecture`` (or ``members``) existed hold one U-Net (one network): the defaults
    read them as they were."""

    in_channels: int = 4
    out_channels: int = 1
    base: int = 32
    depth: int = 4
    norm: Norm = "batch"
    architecture: Architecture = "unet"
    members: int = 1  # an ensemble of this many networks of this config, their probabilities averaged (train.folds)

