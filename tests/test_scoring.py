from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from brats_seg.cli import main
from brats_seg.data.synthetic import make_case
from brats_seg.errors import DataError
from brats_seg.evaluation.scoring import score_files


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def test_score_prints_per_region_metrics(tmp_path, capsys):
    case = make_case(1, 0, (32, 32, 16))
    ref = _save(tmp_path / "ref.nii.gz", case.seg, case.affine)
    pred_labels = case.seg.copy()
    pred_labels[pred_labels == 1] = 4  # necrosis called enhancing: WT and TC perfect, ET not
    pred = _save(tmp_path / "pred.nii.gz", pred_labels, case.affine)
    main(["score", "--ref", ref, "--pred", pred])
    scores = json.loads(capsys.readouterr().out)
    assert scores["labels"] == "brats2020"
    assert scores["wt"]["dice"] == 1.0 and scores["tc"]["dice"] == 1.0
    et_ref, et_pred = (case.seg == 4).sum(), (pred_labels == 4).sum()
    assert scores["et"]["dice"] == 2 * et_ref / (et_ref + et_pred)


def test_binary_mask_against_brats2023_labels_is_scored_as_wt_only(tmp_path, capsys):
    case = make_case(1, 0, (32, 32, 16))
    seg23 = case.seg.copy()
    seg23[seg23 == 4] = 3
    ref = _save(tmp_path / "ref.nii.gz", seg23, case.affine)
    mask = (case.seg > 0).astype(np.uint8)
    assert case.seg[0, 0, 0] == 0
    mask[0, 0, 0] = 1  # one false positive voxel
    pred = _save(tmp_path / "mask.nii.gz", mask, case.affine)
    main(["score", "--ref", ref, "--pred", pred, "--labels", "binary"])
    scores = json.loads(capsys.readouterr().out)
    tumour = int((case.seg > 0).sum())
    assert list(scores) == ["labels", "wt"] and scores["labels"] == "binary"
    assert scores["wt"]["dice"] == 2 * tumour / (2 * tumour + 1)
    assert scores["wt"]["precision"] == tumour / (tumour + 1) and scores["wt"]["recall"] == 1.0


def test_a_0_1_prediction_against_a_multi_label_reference_needs_labels_binary(tmp_path):
    case = make_case(1, 0, (32, 32, 16))
    ref = _save(tmp_path / "ref.nii.gz", case.seg, case.affine)
    pred = _save(tmp_path / "mask.nii.gz", (case.seg > 0).astype(np.uint8), case.affine)
    with pytest.raises(DataError, match="holds only 0 and 1 but .* is a multi-label map; pass --labels binary"):
        score_files(ref, pred, "brats2020")


def test_msd_labels_are_remapped_before_scoring(tmp_path):
    # MSD: 1 oedema, 2 non-enhancing core, 3 enhancing. The prediction calls the core oedema: WT perfect,
    # TC = ET only, ET perfect.
    seg = np.zeros((16, 16, 8), np.uint8)
    seg[2:6, 2:6, 2:4] = 1
    seg[6:8, 6:8, 2:4] = 2  # 8 core voxels
    seg[8:10, 8:10, 2:4] = 3  # 8 enhancing voxels
    pred = seg.copy()
    pred[pred == 2] = 1
    affine = np.eye(4)
    scores = score_files(_save(tmp_path / "r.nii.gz", seg, affine), _save(tmp_path / "p.nii.gz", pred, affine), "msd")
    assert scores["labels"] == "msd" and scores["wt"]["dice"] == 1.0 and scores["et"]["dice"] == 1.0
    assert scores["tc"]["dice"] == 2 * 8 / (16 + 8) and scores["tc"]["recall"] == 0.5


@pytest.mark.parametrize(("values", "labels", "listed"), [
    ([0, 1, 7], "brats2020", ": 7; name the files' scheme with --labels"),
    ([0, 1, 3], "brats2020", "outside the brats2020 labels {0, 1, 2, 4}: 3;"),
    ([0, 4], "brats2023", "outside the brats2023 labels {0, 1, 2, 3}: 4;"),
    ([0.0, 0.5, 1.0], "brats2020", ": 0.5;"),
    ([0, -1, 2], "brats2020", ": -1;"),
    ([0.0, np.nan, 2.0], "brats2020", ": nan;"),
    ([0, 2, 4], "binary", "outside a 0/1 mask {0, 1}: 2, 4; --labels binary needs a whole-tumour mask"),
])
def test_prediction_values_outside_the_scheme_are_listed(tmp_path, values, labels, listed):
    ref_seg = np.zeros((8, 8, 4), np.uint8)
    ref_seg[2:4, 2:4, 1] = 2
    pred_seg = np.zeros((8, 8, 4), np.float32)
    pred_seg[0, 0, : len(values)] = values
    ref = _save(tmp_path / "ref.nii.gz", ref_seg, np.eye(4))
    pred = _save(tmp_path / "pred.nii.gz", pred_seg, np.eye(4))
    with pytest.raises(DataError) as err:
        score_files(ref, pred, labels)
    assert str(err.value).startswith(f"{pred} holds values outside") and listed in str(err.value)


def test_raw_intensities_are_refused_with_a_short_list(tmp_path):
    image = make_case(1, 0, (32, 32, 16)).images["flair"]
    ref = _save(tmp_path / "ref.nii.gz", np.zeros(image.shape, np.uint8), np.eye(4))
    pred = _save(tmp_path / "flair.nii.gz", image, np.eye(4))
    with pytest.raises(DataError, match=r"holds values outside the brats2020 labels .* and \d+ more; "):
        score_files(ref, pred)


def test_different_grids_are_refused_with_one_sentence(tmp_path, capsys):
    case = make_case(1, 0, (32, 32, 16))
    ref = _save(tmp_path / "ref.nii.gz", case.seg, case.affine)
    pred = _save(tmp_path / "pred.nii.gz", case.seg[:, :, :-1], case.affine)
    with pytest.raises(SystemExit) as exc:
        main(["score", "--ref", ref, "--pred", pred])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not on the grid of" in err and "resample the prediction" in err and "Traceback" not in err
