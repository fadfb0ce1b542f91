"""models.build: a network from its typed config."""

from __future__ import annotations

from torch import nn

from brats_seg.models.config import ModelConfig
from brats_seg.models.resunet import ResUNet
from brats_seg.models.unet import UNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": UNet, "resunet": ResUNet}


def build(config: ModelConfig) -> nn.Module:
    """A freshly initialised network of ``config.architecture`` with ``config``'s sizes (it keeps ``config`` as
    its ``.config``); the same torch seed builds the same weights."""
    try:
        cls = ARCHITECTURES[config.architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {config.architecture!r}; use one of {', '.join(ARCHITECTURES)}.") \
            from None
    return cls(config)
