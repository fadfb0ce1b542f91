"""The slice spec's levers (slice.context, slice.normalise): what they change, that their defaults change nothing, and
that the slice stage, evaluate, rescore, predict and the registered model all read a case the same way."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brats_seg.data.layouts import discover_cases
from brats_seg.data.preprocess import preprocess, preprocess_case, stack_context
from brats_seg.data.slicing import run_slice
from brats_seg.data.spec import SliceParams, SliceSpec
from brats_seg.data.synthetic import MODALITIES, make_case
from brats_seg.data.validation import read_manifest
from brats_seg.errors import UserError
from brats_seg.evaluation.evaluate import predicted_cases, score_case
from brats_seg.evaluation.rescore import score_raw_case
from brats_seg.inference.bundle import load_model, save_model
from brats_seg.io.shards import read_shard
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.predict import predict_case
from brats_seg.runners.register import synthetic_example

# the conftest `slices` fixture's settings, as its meta.json records them
FIXTURE = SliceParams(size=32, workers=1, keep_empty_fraction=0.2, split=(0.6, 0.2, 0.2))


@pytest.fixture(scope="module")
def case():
    return make_case(2, seed=4, shape=(96, 96, 40))


def _stack(case) -> np.ndarray:
    return np.stack([case.images[m] for m in MODALITIES]).astype(np.float32)


def test_context_stacks_each_modalitys_neighbours_in_order_and_zero_beyond_the_brain(case):
    alone = preprocess_case(_stack(case), case.affine, size=32, margin=4).images
    with_context = preprocess(SliceSpec(size=32, context=1), _stack(case), case.affine).images
    assert with_context.shape == (alone.shape[0], 12, 32, 32)
    assert SliceSpec(context=1).channel_names()[:3] == ["flair@-1", "flair", "flair@+1"]
    for c in range(4):
        below, centre, above = with_context[:, 3 * c], with_context[:, 3 * c + 1], with_context[:, 3 * c + 2]
        assert np.array_equal(centre, alone[:, c])
        assert np.array_equal(below[1:], alone[:-1, c]) and not below[0].any()
        assert np.array_equal(above[:-1], alone[1:, c]) and not above[-1].any()
    two = stack_context(alone, 2)
    assert two.shape[1] == 20 and np.array_equal(two[2:, 0], alone[:-2, 0]) and not two[:2, 0].any()
    assert stack_context(alone, 0) is alone  # context 0: today's slices, untouched


def test_clip_normalisation_is_deaf_to_a_few_extreme_voxels_and_zscore_is_not(case):
    images = _stack(case)
    brain = np.flatnonzero((images != 0).any(axis=0))
    hot = np.random.default_rng(0).choice(brain, size=len(brain) // 1000, replace=False)  # 0.1 % of the brain
    spiked = []
    for peak in (50.0, 500.0):
        copy = images.copy()
        copy[0].reshape(-1)[hot] = images[0].max() * peak  # a scanner's bright vessels, a site's artefact
        spiked.append(copy)
    clip, zscore = SliceSpec(size=32, normalise="clip"), SliceSpec(size=32)
    clipped = [preprocess(clip, s, case.affine).images for s in spiked]
    scored = [preprocess(zscore, s, case.affine).images for s in spiked]
    assert np.array_equal(clipped[0], clipped[1])  # the peak's height no longer sets the scale
    assert not np.array_equal(scored[0], scored[1])
    side = preprocess(clip, images, case.affine).geometry.side
    plain = preprocess(SliceSpec(size=side, normalise="clip"), images, case.affine).images.astype(np.float32)
    inside = (plain != 0).any(axis=1)
    for c in range(4):  # still a z-score over the brain
        assert abs(plain[:, c][inside].mean()) < 0.05 and abs(plain[:, c][inside].std() - 1.0) < 0.05
    assert not np.array_equal(plain, preprocess(SliceSpec(size=side), images, case.affine).images)


@pytest.fixture(scope="module")
def context_slices(slices, tmp_path_factory):
    """The conftest cohort sliced again with slice.context 1."""
    out = tmp_path_factory.mktemp("context") / "slices"
    params = dataclasses.replace(FIXTURE, context=1)
    run_slice(params, slices.parent / "raw", read_manifest(slices.parent / "m.parquet"), out, seed=0)
    return out


def test_the_slice_stage_writes_the_context_and_keeps_every_slice_it_keeps_without_it(slices, context_slices):
    cases = pd.read_parquet(slices / "cases.parquet")
    assert pd.read_parquet(context_slices / "cases.parquet").equals(cases)
    assert pd.read_parquet(context_slices / "index.parquet").equals(pd.read_parquet(slices / "index.parquet"))
    for shard in cases["shard"]:
        alone, stacked = read_shard(slices / shard), read_shard(context_slices / shard)
        assert np.array_equal(stacked["z"], alone["z"]) and np.array_equal(stacked["labels"], alone["labels"])
        assert stacked["images"].shape[1] == 3 * alone["images"].shape[1]
        assert np.array_equal(stacked["images"][:, 1::3], alone["images"])  # the centre slices: today's


def _context_model(path, in_channels=12, context=1, threshold=0.5):
    torch.manual_seed(3)
    model = UNet(ModelConfig(in_channels=in_channels, out_channels=1, base=4, depth=2)).eval()
    record = {k: v for k, v in dataclasses.asdict(FIXTURE).items() if k not in ("workers", "context", "normalise")}
    if context is not None:  # None: a file written before the field existed
        record["context"] = context
    return save_model(path, model, ("wt",), record, extra={"threshold": threshold})


def test_predict_rescore_and_evaluate_read_a_case_as_the_slice_stage_does(slices, context_slices, tmp_path):
    """An untrained network's mask depends on every input channel, so one context read differently anywhere (a
    neighbour taken from the wrong side, a slice missing) gives another mask."""
    raw = slices.parent / "raw"
    untrained = next(predicted_cases(load_model(_context_model(tmp_path / "unet.pt")), context_slices, raw, "test"))
    middle = float(np.quantile(untrained.probabilities, 0.9))  # a threshold that the untrained outputs straddle
    bundle = load_model(_context_model(tmp_path / "unet.pt", threshold=middle))
    assert bundle.spec == SliceSpec(size=32, context=1) and bundle.spec.channels == 12
    evaluated = list(predicted_cases(bundle, context_slices, raw, "test"))
    assert evaluated
    for done in evaluated:
        case_id = done.record["case_id"]
        (source,) = [c for c in discover_cases(raw) if c.case_id == case_id]
        predict_case(source, bundle, tmp_path / "out")
        written = np.asarray(nib.load(str(tmp_path / "out" / f"{case_id}_mask.nii.gz")).dataobj)
        assert 0 < written.sum() < written.size
        assert np.array_equal(written, done.masks["wt"])
        (rescored,) = score_raw_case(bundle, raw / case_id)
        (scored,) = score_case(case_id, done.masks, done.seg, done.spacing)
        assert rescored["dice"] == scored["dice"] and rescored["pred_voxels"] == scored["pred_voxels"]
    assert synthetic_example(bundle.spec).shape == (2, 12, 32, 32)  # the registered model's input example


def test_a_model_file_whose_context_does_not_fit_its_network_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"context 1 .* 4 input channels"):
        load_model(_context_model(tmp_path / "unet.pt", in_channels=4, context=1))
    with pytest.raises(UserError, match="an invalid slice context"):
        load_model(_context_model(tmp_path / "other.pt", in_channels=4, context=-1))
    old = load_model(_context_model(tmp_path / "old.pt", in_channels=4, context=None))
    assert old.spec == SliceSpec(size=32)  # files without the fields read as what made them
