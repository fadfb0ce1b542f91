from __future__ import annotations

import torch

from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet


def test_width_and_depth_set_the_size():
    small = sum(p.numel() for p in UNet(ModelConfig(base=8, depth=2)).parameters())
    wide = sum(p.numel() for p in UNet(ModelConfig(base=16, depth=2)).parameters())
    deep = sum(p.numel() for p in UNet(ModelConfig(base=8, depth=3)).parameters())
    assert 3.5 < wide / small < 4.1  # conv parameters scale with width squared
    assert deep > 3 * small


def test_skip_connections_carry_spatial_detail():
    # with the bottleneck zeroed, the output still depends on the input through the skips (seeded: an unseeded
    # init could, now and then, leave a one-pixel input dead behind the ReLUs, as test order changed the RNG state)
    with torch.random.fork_rng():  # the other tests' random state is left as it was
        torch.manual_seed(0)
        model = UNet(ModelConfig(in_channels=1, base=4, depth=2, norm="none")).eval()
    for p in model.bottleneck.parameters():
        torch.nn.init.zeros_(p)
    a, b = torch.zeros(1, 1, 16, 16), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 5
    assert not torch.allclose(model(a), model(b))
