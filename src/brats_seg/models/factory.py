"""models.build: a network from its typed config."""

from __future__ import annotations

import dataclasses

from torch import nn

from brats_seg.models.config import ModelConfig
from brats_seg.models.ensemble import Ensemble
from brats_seg.models.resunet import ResUNet
from brats_seg.models.unet import UNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": UNet, "resunet": ResUNet}


def build(config: ModelConfig) -> nn.Module:
    """A freshly initialised network of ``config.architecture`` with ``config``'s sizes (it keeps ``config`` as
    its ``.config``), or with ``members`` above 1 an :class:`Ensemble` of that many; the same torch seed builds
    the same weights."""
    if isinstance(config.members, bool) or not isinstance(config.members, int) or config.members < 1:
        raise ValueError(f"members must be an integer >= 1, got {config.members!r}")
    if config.members > 1:
        one = dataclasses.replace(config, members=1)
        return Ensemble(config, [build(one) for _ in range(config.members)])
    try:
        cls = ARCHITECTURES[config.architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {config.architecture!r}; use one of {', '.join(ARCHITECTURES)}.") \
            from None
    return cls(config)
