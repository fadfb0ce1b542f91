"""train.folds: an ensemble of networks on patient-level folds of the training split."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_seg.config import load_section
from brats_seg.data.dataset import load_split
from brats_seg.data.slicing import patient_id
from brats_seg.errors import ConfigError, DataError
from brats_seg.inference.bundle import load_model, save_model
from brats_seg.models.ensemble import Ensemble
from brats_seg.training.ensemble import member_folds, train_members
from brats_seg.training.loop import train_model
from brats_seg.training.params import TrainParams

PARAMS = TrainParams(epochs=1, batch_size=8, lr=3e-3, base=4, depth=2, threads=1, target="wt", augment=False)
SLICE = {"size": 32, "margin": 4, "modalities": ["flair", "t1", "t1ce", "t2"]}


def test_folds_deal_whole_patients_round_robin_by_the_split_hash():
    cases = np.array([f"p{i}" for i in range(7) for _ in range(3)] + ["BraTS-GLI-00001-000", "BraTS-GLI-00001-001"])
    folds = member_folds(cases, seed=0, folds=3)
    by_patient = {}
    for case, fold in zip(cases, folds):
        by_patient.setdefault(patient_id(case), set()).add(int(fold))
    assert all(len(f) == 1 for f in by_patient.values())  # a patient (both time points) in one fold
    sizes = np.bincount([f.pop() for f in by_patient.values()], minlength=3)
    assert sorted(sizes.tolist()) == [2, 3, 3]  # 8 patients dealt round-robin
    assert np.array_equal(folds, member_folds(cases[::-1], seed=0, folds=3)[::-1])  # order of slices: no matter
    assert not np.array_equal(folds, member_folds(cases, seed=1, folds=3))
    with pytest.raises(DataError, match="train.folds is 9 but the training split holds 8 patients"):
        member_folds(cases, seed=0, folds=9)


def test_train_folds_is_checked():
    with pytest.raises(ConfigError, match="train.folds must be 0 .one network. or a number of folds from 2 to 10"):
        load_section(TrainParams, {"train": {"folds": 1}}, "train")


def test_each_member_trains_without_its_fold_and_the_ensemble_averages_them(slices, tmp_path, caplog):
    train, val = load_split(slices, "train"), load_split(slices, "val")
    folds = member_folds(train.case_ids, 0, 2)
    with caplog.at_level(logging.INFO, logger="brats_seg"):
        result = train_members(dataclasses.replace(PARAMS, folds=2), train, val, 0, tmp_path, "a" * 16, 4)
    for i in range(2):
        said = (f"ensemble member for fold {i} (folds 0 to 1): {(folds != i).sum()} training slices, "
                f"{(folds == i).sum()} validation slices of fold {i}")
        assert said in caplog.text
    assert isinstance(result.model, Ensemble) and result.model.config.members == 2
    assert [h["fold"] for h in result.history] == [0, 1]
    # member 0 is the network train_model makes on the patients outside fold 0, validated on fold 0
    alone = train_model(PARAMS, train.subset(folds != 0), train.subset(folds == 0), 0, tmp_path / "x.pt", 4)
    for key, value in alone.model.state_dict().items():
        assert torch.equal(result.model.members[0].state_dict()[key], value), key
    x = torch.from_numpy(val.images[:8].astype(np.float32))
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(m(x)) for m in result.model.members]).mean(0)
        np.testing.assert_allclose(torch.sigmoid(result.model(x)).numpy(), mean.numpy(), atol=1e-6)
        loaded = load_model(save_model(tmp_path / "m.pt", result.model, ("wt",), SLICE)).model
        assert isinstance(loaded, Ensemble)
        np.testing.assert_allclose(torch.sigmoid(loaded(x)).numpy(), mean.numpy(), atol=1e-6)
    # an interrupted ensemble resumes member by member: every member's checkpoint is there, nothing retrains
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="brats_seg"):
        again = train_members(dataclasses.replace(PARAMS, folds=2), train, val, 0, tmp_path, "a" * 16, 4)
    assert caplog.text.count("resuming from the checkpoint after epoch 1 of 1") == 2
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in result.model.state_dict().items())


def test_folds_0_trains_the_one_network_of_before(slices, tmp_path):
    train, val = load_split(slices, "train"), load_split(slices, "val")
    one = train_members(PARAMS, train, val, 0, tmp_path, "b" * 16, 4)
    before = train_model(PARAMS, train, val, 0, tmp_path / "y.pt", 4)
    assert not isinstance(one.model, Ensemble) and one.model.config.members == 1
    assert all(torch.equal(one.model.state_dict()[k], v) for k, v in before.model.state_dict().items())
    assert (tmp_path / f"{'b' * 16}.pt").is_file()  # the checkpoint's name is the one of before


def test_the_train_stage_writes_one_model_file_of_the_ensemble_and_each_folds_validation(slices, tmp_path,
                                                                                      monkeypatch, store):
    import pandas as pd

    from brats_seg.base_params import BaseParams
    from brats_seg.io.tables import read_json
    from brats_seg.runners.train import train_stage
    from brats_seg.training.loop import validate

    monkeypatch.chdir(tmp_path)
    shutil.copytree(slices, tmp_path / "data" / "slices")
    # no raw data here: the post-processing chosen on the validation patients' own grids is another test's subject
    params = dataclasses.replace(PARAMS, folds=2, device="cpu", postprocess=False, threshold=0.5)
    report = train_stage(params, BaseParams(seed=0))
    bundle = load_model("models/unet.pt")
    assert isinstance(bundle.model, Ensemble) and bundle.model.config.members == 2
    val = load_split("data/slices", "val")
    assert report["best_val_dice"] == pytest.approx(validate(bundle.model, val, ("wt",), params.bce_weight)["val_dice"])
    assert {"fold0_val_dice", "fold1_val_dice", "fold0_best_epoch", "fold1_best_epoch"} <= set(report)
    assert read_json("reports/train.json")["fold1_val_dice"] == report["fold1_val_dice"]
    curve = pd.read_csv("reports/train_curve.csv")
    assert curve["fold"].tolist() == [0, 1] and curve.loc[1, "val_dice"] == report["fold1_val_dice"]
    assert not list((tmp_path / "data" / "cache" / "checkpoints").glob("*.pt"))  # done: no member left behind
    from brats_seg.cli import summary

    Path("params.yaml").write_text("base: {}\n")
    assert f"Dice {report['best_val_dice']:.3f} (an ensemble of 2, members' best epochs 1, 1)" in summary()
