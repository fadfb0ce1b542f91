"""Building blocks shared by the architectures."""

from __future__ import annotations

from torch import nn

from brats_seg.models.config import Norm


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """Batch, instance (affine) or group normalisation (8 groups at most) over ``channels``, or none."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def conv(cin: int, cout: int, norm: Norm, kernel: int = 3) -> nn.Conv2d:
    """A same-size convolution, with a bias only where no normalisation follows it."""
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none")
