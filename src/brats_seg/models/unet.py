"""A 2D U-Net: encoder-decoder with skip connections, a pure ``nn.Module``.

Input ``[N, in_channels, H, W]`` float, output logits ``[N, out_channels, H, W]``; H and W must be
divisible by ``2 ** depth``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "instance", "group", "none"]


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture. ``base``: channels of the first level, doubled per level; ``depth``: poolings."""

    in_channels: int = 4
    out_channels: int = 1
    base: int = 32
    depth: int = 4
    norm: Norm = "batch"


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def conv_block(cin: int, cout: int, norm: Norm) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by normalisation and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``depth`` poolings and widths ``base * 2**level``."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**i for i in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        cin = config.in_channels
        for w in widths[:-1]:
            self.encoders.append(conv_block(cin, w, config.norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = conv_block(widths[-2], widths[-1], config.norm)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_in, w_out in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.upsamples.append(nn.ConvTranspose2d(w_in, w_out, 2, stride=2))
            self.decoders.append(conv_block(2 * w_out, w_out, config.norm))
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)
