"""Test-time mirroring (evaluate.tta): the mean over the flips, computed by hand; off by default with the seed's
single pass unchanged; carried by the model file into predict, and into the registered ONNX graph itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_seg.data.preprocess import CaseGeometry
from brats_seg.errors import UserError
from brats_seg.inference.bundle import ModelBundle, load_model, predict_mirrored, predict_slices, save_model
from brats_seg.inference.segment import segment_case, slice_probabilities
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.registry import registered_model

SLICE = {"size": 16, "margin": 2, "modalities": ["flair", "t1"]}


@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(3)  # random weights: a network that is not symmetric, so mirroring changes its output
    return UNet(ModelConfig(in_channels=2, out_channels=3, base=4, depth=2)).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 2, 16, 16)).astype(np.float32)


def _by_hand(net: UNet, images: np.ndarray) -> np.ndarray:
    """The four mirrorings (none, W, H, both), each prediction flipped back, averaged."""
    outs = []
    for flip_h in (False, True):
        for flip_w in (False, True):
            x = images[:, :, ::-1] if flip_h else images
            x = x[..., ::-1] if flip_w else x
            p = predict_slices(net, np.ascontiguousarray(x)).float().numpy()
            p = p[:, :, ::-1] if flip_h else p
            outs.append(p[..., ::-1] if flip_w else p)
    return np.mean(outs, axis=0)


def test_mirroring_is_the_mean_over_the_four_flips_and_changes_the_output(net, images):
    mirrored = predict_mirrored(net, images)
    assert mirrored.dtype == np.float32 and mirrored.shape == (5, 3, 16, 16)
    np.testing.assert_allclose(mirrored, _by_hand(net, images), atol=1e-6)
    single = predict_slices(net, images).float().numpy()
    assert np.abs(mirrored - single).max() > 1e-3  # the lever does something
    flipped = predict_mirrored(net, np.ascontiguousarray(images[..., ::-1]))
    np.testing.assert_allclose(flipped, mirrored[..., ::-1], atol=1e-3)  # mirrored input, mirrored output


def test_off_by_default_the_one_pass_is_unchanged_and_the_model_or_an_override_turns_it_on(net, images):
    plain = ModelBundle(net, ("wt", "tc", "et"), SLICE)
    assert plain.tta is False
    np.testing.assert_array_equal(slice_probabilities(plain, images), predict_slices(net, images).float().numpy())
    np.testing.assert_array_equal(slice_probabilities(plain, images, tta=True), predict_mirrored(net, images))
    on = ModelBundle(net, ("wt", "tc", "et"), SLICE, tta=True)
    np.testing.assert_array_equal(slice_probabilities(on, images), predict_mirrored(net, images))
    geometry = CaseGeometry(shape=(20, 20, 5), ornt=((0.0, 1.0), (1.0, 1.0), (2.0, 1.0)), x0=2, y0=2, side=16,
                            size=16)
    z = np.arange(5)
    seg_on = segment_case(on, images, z, geometry, (1.0, 1.0, 1.0))
    seg_plain = segment_case(plain, images, z, geometry, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(seg_on.probabilities, predict_mirrored(net, images))
    np.testing.assert_array_equal(seg_plain.probabilities, predict_slices(net, images).float().numpy())


def test_the_model_file_carries_it_and_a_bad_value_is_one_sentence(net, tmp_path):
    on = load_model(save_model(tmp_path / "on.pt", net, ("wt", "tc", "et"), SLICE, extra={"tta": True}))
    older = load_model(save_model(tmp_path / "older.pt", net, ("wt", "tc", "et"), SLICE))
    assert on.tta is True and older.tta is False  # files written before the lever: one pass, as they were scored
    save_model(tmp_path / "bad.pt", net, ("wt", "tc", "et"), SLICE, extra={"tta": "yes"})
    with pytest.raises(UserError, match=r"an invalid test-time mirroring setting 'yes' \(true or false\)"):
        load_model(tmp_path / "bad.pt")


def test_the_registered_graph_mirrors_itself(net, images):
    pytest.importorskip("onnxruntime")
    graph = registered_model.export_onnx(net, images[:2], tta=True)
    np.testing.assert_allclose(registered_model.run_onnx(graph, images), predict_mirrored(net, images), atol=2e-3)
    plain = registered_model.export_onnx(net, images[:2])
    np.testing.assert_allclose(registered_model.run_onnx(plain, images), predict_slices(net, images).float().numpy(),
                               atol=2e-3)
    assert np.abs(registered_model.run_onnx(graph, images) - registered_model.run_onnx(plain, images)).max() > 1e-3
