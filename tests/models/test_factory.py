"""models.build: every architecture from its typed config; the model file and the ONNX graph carry it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from brats_seg.errors import UserError
from brats_seg.inference.bundle import load_model, save_model
from brats_seg.io.checkpoint import load_weights_file, save_checkpoint
from brats_seg.models.config import ModelConfig
from brats_seg.models.ensemble import Ensemble
from brats_seg.models.factory import ARCHITECTURES, build
from brats_seg.models.resunet import ResidualBlock, ResUNet
from brats_seg.models.unet import UNet
from brats_seg.registry.registered_model import export_onnx, run_onnx

SLICE = {"size": 32, "margin": 4, "modalities": ["flair", "t2"]}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_every_architecture_maps_slices_to_logits_and_learns(architecture, norm):
    config = ModelConfig(in_channels=2, out_channels=3, base=8, depth=2, norm=norm, architecture=architecture)
    model = build(config)
    assert model.config == config and type(model) is ARCHITECTURES[architecture]
    x = torch.randn(2, 2, 32, 32, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 3, 32, 32)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_the_residual_unet_is_another_network_with_the_same_topology():
    unet = build(ModelConfig(in_channels=2, base=8, depth=2))
    res = build(ModelConfig(in_channels=2, base=8, depth=2, architecture="resunet"))
    assert isinstance(res, ResUNet) and isinstance(res, UNet) and type(unet) is UNet
    assert all(isinstance(block, ResidualBlock) for block in (*res.encoders, res.bottleneck, *res.decoders))
    assert sum(p.numel() for p in res.parameters()) > sum(p.numel() for p in unet.parameters())  # 1x1 shortcuts
    torch.manual_seed(1)
    a = build(ModelConfig(in_channels=2, base=8, depth=2, architecture="resunet"))
    torch.manual_seed(1)
    b = build(ModelConfig(in_channels=2, base=8, depth=2, architecture="resunet"))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())  # the seed decides


def test_a_residual_block_adds_its_input_where_the_width_is_kept():
    block = ResidualBlock(4, 4, "none").eval()
    for p in block.body.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 4, 8, 8)  # non-negative: the final ReLU keeps it
    assert torch.equal(block(x), x)


def test_an_unknown_architecture_is_one_sentence():
    with pytest.raises(ValueError, match="unknown architecture 'vnet'; use one of unet, resunet"):
        build(ModelConfig(architecture="vnet"))


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_the_model_file_and_the_onnx_graph_carry_the_architecture(tmp_path, architecture, members):
    """And an ensemble (train.folds) is one model to them all: its output is the logit of its members' mean
    probability."""
    torch.manual_seed(0)
    net = build(ModelConfig(in_channels=2, out_channels=3, base=4, depth=2, architecture=architecture,
                            members=members)).eval()
    bundle = load_model(save_model(tmp_path / "m.pt", net, ("wt", "tc", "et"), SLICE))
    assert type(bundle.model) is type(net) and bundle.model.config == net.config
    assert type(net) is (Ensemble if members > 1 else ARCHITECTURES[architecture])
    x = np.random.default_rng(0).normal(size=(3, 2, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(x))).numpy()
        loaded = torch.sigmoid(bundle.model(torch.from_numpy(x))).numpy()  # channels_last: rounding only
        if members > 1:
            mean = torch.stack([torch.sigmoid(m(torch.from_numpy(x))) for m in net.members]).mean(0).numpy()
            np.testing.assert_allclose(expected, mean, atol=1e-6)
            assert np.abs(mean - torch.sigmoid(net.members[0](torch.from_numpy(x))).numpy()).max() > 1e-3
    np.testing.assert_allclose(loaded, expected, atol=1e-6)
    np.testing.assert_allclose(run_onnx(export_onnx(net, x), x), expected, atol=1e-5)


def test_a_model_file_from_before_the_architecture_field_loads_as_the_unet_it_holds(tmp_path):
    torch.manual_seed(0)
    net = UNet(ModelConfig(in_channels=2, out_channels=3, base=4, depth=2)).eval()
    path = save_model(tmp_path / "m.pt", net, ("wt", "tc", "et"), SLICE)
    data = load_weights_file(path)
    data["config"] = {k: v for k, v in data["config"].items() if k != "architecture"}
    save_checkpoint(tmp_path / "old.pt", data)
    bundle = load_model(tmp_path / "old.pt")
    assert type(bundle.model) is UNet
    assert all(torch.equal(bundle.model.state_dict()[k], v) for k, v in net.state_dict().items())
    data["config"]["architecture"] = "resunet"  # weights of a U-Net under another architecture's name
    save_checkpoint(tmp_path / "lie.pt", data)
    with pytest.raises(UserError, match="does not hold weights that fit its model config"):
        load_model(tmp_path / "lie.pt")
    data["config"] = dataclasses.asdict(ModelConfig(in_channels=2, out_channels=3, base=4, depth=2,
                                                    architecture="vnet"))
    save_checkpoint(tmp_path / "vnet.pt", data)
    with pytest.raises(UserError, match="unknown architecture 'vnet'"):
        load_model(tmp_path / "vnet.pt")
