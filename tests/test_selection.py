"""train.select: the epoch a training run keeps, by per-patient Dice or by the gate's lesion-wise Dice."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brats_seg.base_params import BaseParams
from brats_seg.cli import summary
from brats_seg.config import load_section
from brats_seg.data.dataset import load_split
from brats_seg.data.labels import OEDEMA, region_mask
from brats_seg.errors import ConfigError
from brats_seg.evaluation.evaluate import lesion_score
from brats_seg.io.tables import read_json
from brats_seg.runners.train import train_stage
from brats_seg.training.loop import train_model, validate
from brats_seg.training.params import TrainParams
from brats_seg.training.selection import LesionSelection, lesion_dice, selection_for

PARAMS = TrainParams(epochs=5, batch_size=4, lr=3e-3, base=8, depth=2, threads=1, target="wt", augment=False,
                     device="cpu", postprocess=False, threshold=0.5, bce_weight=0.0)


def _disc(n: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    y, x = np.indices((n, n))
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def test_lesion_dice_scores_each_patients_stacked_slices_in_axial_order():
    size, depth = 24, 6
    truth = np.zeros((2 * depth, size, size), dtype=np.uint8)
    truth[:, _disc(size, (8, 8), 4)] = OEDEMA
    pred = (truth > 0)[:, None].copy()
    pred[depth + 1, 0, _disc(size, (19, 19), 2)] = True  # patient b: one false lesion, one slice thick
    case_ids = np.array(["a"] * depth + ["b"] * depth)
    z = np.concatenate([np.arange(depth), np.arange(depth)])
    got = lesion_dice(pred, truth, case_ids, z, ("wt",), LesionSelection())
    score = lesion_score("gli")
    by_hand = [score(pred[case_ids == c, 0], region_mask(truth[case_ids == c], "wt"), (1.0, 1.0, 1.0)) for c in "ab"]
    assert got == pytest.approx(np.mean(by_hand)) and by_hand[0] == 1.0 and by_hand[1] == pytest.approx(0.5)
    shuffled = np.random.default_rng(0).permutation(len(z))  # slices in any order: stacked by z per patient
    assert lesion_dice(pred[shuffled], truth[shuffled], case_ids[shuffled], z[shuffled], ("wt",),
                       LesionSelection()) == pytest.approx(got)
    # two slices that touch only when stacked in order are one lesion: a wrong order would split it into two
    split = pred.copy()
    split[depth + 1, 0, _disc(size, (19, 19), 2)] = False
    split[depth + 2, 0, _disc(size, (19, 19), 2)] = True
    split[depth + 3, 0, _disc(size, (19, 19), 2)] = True
    assert lesion_dice(split, truth, case_ids, z, ("wt",), LesionSelection()) == pytest.approx(got)
    apart = z.copy()
    apart[depth + 3] = depth + 5  # the same slices, no longer neighbours: two false lesions
    assert lesion_dice(split, truth, case_ids, apart, ("wt",), LesionSelection()) < got


def test_the_pixel_size_comes_from_each_cases_crop_side_and_slice_size():
    assert selection_for({"a": (180, 96), "b": (96, 96)}, "mets") == LesionSelection("mets", {"a": 1.875, "b": 1.0})


@pytest.mark.parametrize("value", ["lesion", "hd95", 1])
def test_train_select_is_dice_or_lesion_dice(value):
    with pytest.raises(ConfigError, match=r"train\.select must be one of 'dice', 'lesion_dice'"):
        load_section(TrainParams, {"train": {"select": value}}, "train")
    assert TrainParams().select == "dice"


def test_lesion_dice_selection_keeps_the_epoch_of_the_best_lesion_wise_dice_and_trains_the_same(slices, tmp_path):
    train, val = load_split(slices, "train"), load_split(slices, "val")
    by_dice = train_model(PARAMS, train, val, 0, tmp_path / "a.pt", 4)
    by_lesion = train_model(dataclasses.replace(PARAMS, select="lesion_dice"), train, val, 0, tmp_path / "b.pt", 4)
    assert "val_lesion_dice" not in by_dice.history[0]  # the default computes what it always did
    assert [h["val_dice"] for h in by_dice.history] == [h["val_dice"] for h in by_lesion.history]  # same training
    lesion = [h["val_lesion_dice"] for h in by_lesion.history]
    assert by_lesion.best_epoch == 1 + int(np.argmax(lesion))
    assert by_dice.best_epoch == 1 + int(np.argmax([h["val_dice"] for h in by_dice.history]))
    assert by_lesion.best_epoch != by_dice.best_epoch  # here the Dice still rises after the lesion-wise Dice peaks
    # the kept network is that epoch's: validating it again gives the number it was chosen by
    again = validate(by_lesion.model, val, ("wt",), PARAMS.bce_weight, lesions=LesionSelection())
    assert again["val_lesion_dice"] == pytest.approx(max(lesion))


def test_the_train_stage_reports_the_lesion_wise_dice_it_chose_by(slices, store):
    shutil.copytree(slices, store / "data" / "slices")
    report = train_stage(dataclasses.replace(PARAMS, epochs=2, select="lesion_dice"), BaseParams(seed=0))
    curve = pd.read_csv("reports/train_curve.csv")
    assert report["best_val_lesion_dice"] == curve["val_lesion_dice"].max()
    assert report["best_epoch"] == curve.loc[curve["val_lesion_dice"].idxmax(), "epoch"]
    assert read_json("reports/train.json")["best_val_lesion_dice"] == report["best_val_lesion_dice"]
    Path("params.yaml").write_text("base: {}\n")
    assert f"chosen by lesion-wise Dice {report['best_val_lesion_dice']:.3f}" in summary()


def test_each_ensemble_member_keeps_its_best_lesion_wise_epoch_on_its_own_fold(slices, tmp_path):
    from brats_seg.training.ensemble import train_members

    train, val = load_split(slices, "train"), load_split(slices, "val")
    params = dataclasses.replace(PARAMS, folds=2, select="lesion_dice", epochs=3)
    result = train_members(params, train, val, 0, tmp_path, "c" * 16, 4, lesions=LesionSelection())
    for fold in (0, 1):
        rows = [h for h in result.history if h["fold"] == fold]
        top = max(rows, key=lambda h: h["val_lesion_dice"])
        member = result.model.members[fold]
        held_out = train.subset(_fold(train, fold))
        again = validate(member, held_out, ("wt",), params.bce_weight, lesions=LesionSelection())
        assert again["val_lesion_dice"] == pytest.approx(top["val_lesion_dice"])


def _fold(data, fold: int) -> np.ndarray:
    from brats_seg.training.ensemble import member_folds

    return member_folds(data.case_ids, 0, 2) == fold
