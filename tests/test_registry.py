"""Register and promote against a real sqlite MLflow store in a temporary directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_seg import tracking
from brats_seg.errors import UserError
from brats_seg.models.unet import UNet, UNetConfig
from brats_seg.promotion import PromoteParams, promote

NAME = "brats-unet-test"
PARAMS = PromoteParams(min_improvement=0.01, min_dice=0.5)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _register(dice: float, split: str = "split-a") -> str:
    model = UNet(UNetConfig(in_channels=1, base=4, depth=1)).eval()
    example = np.zeros((1, 1, 16, 16), np.float32)
    with tracking.start_run("registry-test") as run:
        run.log_metrics({"test_wt_dice_mean": dice})
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    record = tracking.register_model(run.run_id, model, NAME, example, out,
                                     {"regions": ["wt"], "slice": {"size": 16, "margin": 0, "modalities": ["flair"]}},
                                     {"test_wt_dice_mean": str(dice), "split_digest": split}, "challenger")
    return record["version"]


def _champion() -> str | None:
    found = tracking.model_version(NAME, alias="champion")
    return None if found is None else found["version"]


def test_first_champion_better_promoted_worse_refused_other_split_refused(store):
    low = _register(0.40)
    decision = promote(NAME, PARAMS)
    assert not decision["promoted"] and "below the floor" in decision["reason"] and _champion() is None

    first = _register(0.80)
    assert promote(NAME, PARAMS)["promoted"] and _champion() == first

    better = _register(0.85)
    record = promote(NAME, PARAMS)
    assert record["promoted"] and _champion() == better
    assert record["champion_dice"] == pytest.approx(0.80) and record["previous_champion"] == first

    slightly = _register(0.855)  # higher, but by less than min_improvement
    assert not promote(NAME, PARAMS)["promoted"] and _champion() == better

    worse = _register(0.70)
    record = promote(NAME, PARAMS)
    assert not record["promoted"] and "does not beat champion" in record["reason"] and _champion() == better

    other = _register(0.99, split="split-b")
    record = promote(NAME, PARAMS)
    assert not record["promoted"] and "refused to compare" in record["reason"] and _champion() == better

    tags = tracking.model_version(NAME, version=worse)["tags"]
    assert tags["promotion_decision"] == "kept" and tags["promotion_compared_with"] == better
    assert tracking.model_version(NAME, version=better)["tags"]["promotion_decision"] == "promoted"
    assert promote(NAME, PARAMS, version=other, force=True)["promoted"] and _champion() == other
    assert low and slightly  # every candidate was registered as its own version


def test_registered_model_loads_with_its_metadata_and_batches(store):
    version = _register(0.9)
    model, meta = tracking.load_registered_model(f"models:/{NAME}/{version}")
    assert meta["regions"] == ["wt"] and meta["slice"]["size"] == 16
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 1, 16, 16)
    info = tracking.model_version(NAME, alias="challenger")
    assert info["version"] == version and info["tags"]["split_digest"] == "split-a"


def test_no_challenger_is_one_sentence(store):
    with pytest.raises(UserError, match="model nothing-here has no .challenger. alias in the registry"):
        promote("nothing-here", PARAMS)
