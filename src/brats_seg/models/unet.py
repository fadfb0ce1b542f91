"""A 2D U-Net: encoder-decoder with skip connections, a pure ``nn.Module``.

Input ``[N, in_channels, H, W]`` float, output logits ``[N, out_channels, H, W]``; H and W must be
divisible by ``2 ** depth``.
"""

from __future__ import annotations

import torch
from torch import nn

from brats_seg.models.config import ModelConfig, Norm
from brats_seg.models.layers import conv, norm_layer


def conv_block(cin: int, cout: int, norm: Norm) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by normalisation and ReLU."""
    return nn.Sequential(conv(cin, cout, norm), norm_layer(norm, cout), nn.ReLU(inplace=True),
                         conv(cout, cout, norm), norm_layer(norm, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``depth`` poolings and widths ``base * 2**level``; a subclass changes
    the convolution block of every level (:meth:`block`) and keeps the rest."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.base * 2**i for i in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        cin = config.in_channels
        for w in widths[:-1]:
            self.encoders.append(self.block(cin, w, config.norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = self.block(widths[-2], widths[-1], config.norm)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_in, w_out in zip(reversed(widths[1:]), reversed(widths[:-1])):
            self.upsamples.append(nn.ConvTranspose2d(w_in, w_out, 2, stride=2))
            self.decoders.append(self.block(2 * w_out, w_out, config.norm))
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)

    @staticmethod
    def block(cin: int, cout: int, norm: Norm) -> nn.Module:
        """The convolutions of one level: two 3x3, each followed by normalisation and ReLU."""
        return conv_block(cin, cout, norm)

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
