"""train.threshold: the probability above which a voxel is tumour, fixed or chosen on the validation patients."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import mlflow
from brats_seg.base_params import BaseParams
from brats_seg.cli import summary
from brats_seg.config import load_section
from brats_seg.data.labels import OEDEMA
from brats_seg.errors import ConfigError, UserError
from brats_seg.evaluation.choose_postprocess import DEFAULT_THRESHOLD, THRESHOLDS, choose_threshold
from brats_seg.evaluation.evaluate import choose_postprocessing, predicted_cases
from brats_seg.inference.bundle import load_model
from brats_seg.io.tables import read_json
from brats_seg.runners.train import train_stage
from brats_seg.training.params import TrainParams

SHAPE = (32, 32, 24)
PARAMS = TrainParams(epochs=1, batch_size=8, lr=3e-3, base=4, depth=2, threads=1, target="wt", augment=False,
                     device="cpu")


def dice(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2 * (pred & ref).sum() / total)


def ball(radius: float, centre: tuple[int, int, int] = (16, 16, 12)) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def cases_of(probabilities: list[np.ndarray], refs: list[np.ndarray]):
    """``cases_at`` for WT alone: each case's mask at a threshold, with its reference label map."""
    def cases_at(threshold: float) -> list:
        return [({"wt": p > threshold}, ref, (1.0, 1.0, 1.0)) for p, ref in zip(probabilities, refs)]

    return cases_at


def labels(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, OEDEMA, 0).astype(np.uint8)


def test_a_false_rim_joined_to_the_tumour_is_cut_by_a_higher_threshold_not_by_any_component_size():
    probs, refs = [], []
    for radius in (5, 6, 7):
        p = np.where(ball(radius + 2), 0.55, 0.02).astype(np.float32)  # a rim of over-segmentation, touching it
        p[ball(radius)] = 0.9
        probs.append(p)
        refs.append(labels(ball(radius)))
    choice = choose_threshold(cases_of(probs, refs), dice, THRESHOLDS, regions=("wt",))
    assert choice.threshold == 0.6  # the lowest that cuts the rim: 0.7 and 0.8 only tie with it
    assert set(choice.tried["threshold"]) == {0.3, 0.4, 0.5, 0.6, 0.7, 0.8}
    assert choice.tried["threshold"][0.5] < 1.0 == choice.tried["threshold"][0.6] == choice.after["wt"]
    assert choice.postprocess.min_component_mm3 == {"wt": 0.0}  # one component: no size could have helped
    assert choice.to_dict()["threshold"] == 0.6


def test_an_under_segmenting_model_gets_a_lower_threshold_and_a_right_one_keeps_the_default():
    probs = []
    for radius in (5, 6, 7):
        p = np.where(ball(radius + 2), 0.45, 0.02).astype(np.float32)  # the tumour's edge, found at 0.45 only
        p[ball(radius)] = 0.9
        probs.append(p)
    refs = [labels(ball(r + 2)) for r in (5, 6, 7)]
    assert choose_threshold(cases_of(probs, refs), dice, THRESHOLDS, regions=("wt",)).threshold == 0.3
    right = [labels(ball(r)) for r in (5, 6, 7)]
    exact = [np.where(ball(r), 0.9, 0.1).astype(np.float32) for r in (5, 6, 7)]
    choice = choose_threshold(cases_of(exact, right), dice, THRESHOLDS, regions=("wt",))
    assert choice.threshold == DEFAULT_THRESHOLD and set(choice.tried["threshold"].values()) == {1.0}  # all tie


@pytest.mark.parametrize("thresholds", [(0.0, 0.5), (0.5, 1.0), (True,), ("0.6",)])
def test_thresholds_outside_0_to_1_are_refused_in_one_sentence(thresholds):
    with pytest.raises(UserError, match="not all numbers between 0 and 1"):
        choose_threshold(cases_of([], []), dice, thresholds)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, "high"])
def test_train_threshold_is_auto_or_a_probability(value):
    with pytest.raises(ConfigError, match=r"train\.threshold must be .*'auto'.*, got"):
        load_section(TrainParams, {"train": {"threshold": value}}, "train")
    assert load_section(TrainParams, {"train": {"threshold": "auto"}}, "train").threshold == "auto"
    assert load_section(TrainParams, {"train": {"threshold": 0.4}}, "train").threshold == 0.4
    assert TrainParams().threshold == "auto"  # the default (0.5, the rule of every model before, is set by hand)


@pytest.fixture
def project(slices, store):
    """A working directory holding the session's slices and the raw cases they were cut from."""
    shutil.copytree(slices, store / "data" / "slices")
    shutil.copytree(slices.parent / "raw", store / "data" / "raw")
    return store


def test_a_fixed_threshold_goes_into_the_model_file_and_makes_its_masks(project):
    train_stage(dataclasses.replace(PARAMS, threshold=0.7, postprocess=False), BaseParams(seed=0))
    bundle = load_model("models/unet.pt")
    assert bundle.threshold == 0.7 and bundle.postprocess.min_component_mm3 == {}
    case = next(predicted_cases(bundle, "data/slices", "data/raw", "val"))
    at_half = next(predicted_cases(dataclasses.replace(bundle, threshold=0.5), "data/slices", "data/raw", "val"))
    np.testing.assert_array_equal(case.probabilities, at_half.probabilities)  # same network, another cut
    assert case.masks["wt"].sum() <= at_half.masks["wt"].sum()


def test_auto_takes_the_threshold_whose_post_processed_validation_score_is_best(project):
    train_stage(dataclasses.replace(PARAMS, threshold="auto"), BaseParams(seed=0))
    bundle = load_model("models/unet.pt")
    # each threshold's post-processing chosen on its own (masks from the predict step at that threshold)
    scores, choices = {}, {}
    for t in (DEFAULT_THRESHOLD, *sorted(set(THRESHOLDS) - {DEFAULT_THRESHOLD})):
        choices[t] = choose_postprocessing(dataclasses.replace(bundle, threshold=t), "data/slices", "data/raw",
                                           main_tumour=True)
        scores[t] = float(np.mean(list(choices[t].after.values())))
    best = max(scores, key=lambda t: (scores[t], -list(scores).index(t)))  # ties: the earlier (0.5 first)
    assert bundle.threshold == best and bundle.postprocess == choices[best].postprocess
    run = mlflow.MlflowClient().get_run(read_json("reports/train_run.json")["run_id"])
    assert run.data.tags["threshold"] == f"{best:g}" and read_json("reports/train.json")["threshold"] == best
    Path("params.yaml").write_text("base: {}\n")
    assert f"threshold {best:g}; MLflow run" in summary()
