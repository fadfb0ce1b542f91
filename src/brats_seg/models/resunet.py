"""A 2D residual U-Net: the U-Net's topology with a residual block at every level (He et al. 2016, as in the
residual encoders of nnU-Net ResEnc and MONAI's ``UNet(num_res_units)``): each level learns a correction added to
its input, which trains deeper and wider networks more stably than plain stacked convolutions."""

from __future__ import annotations

import torch
from torch import nn

from brats_seg.models.config import Norm
from brats_seg.models.layers import conv, norm_layer
from brats_seg.models.unet import UNet


class ResidualBlock(nn.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``: two 3x3 convolutions and a shortcut, a 1x1
    convolution with normalisation where the channel count changes."""

    def __init__(self, cin: int, cout: int, norm: Norm) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(cin, cout, norm), norm_layer(norm, cout), nn.ReLU(inplace=True),
                                  conv(cout, cout, norm), norm_layer(norm, cout))
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(conv(cin, cout, norm, kernel=1),
                                                                         norm_layer(norm, cout))
        self.out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResUNet(UNet):
    """The U-Net of :class:`~brats_seg.models.unet.UNet` with :class:`ResidualBlock` levels."""

    @staticmethod
    def block(cin: int, cout: int, norm: Norm) -> nn.Module:
        return ResidualBlock(cin, cout, norm)
