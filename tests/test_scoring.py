from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from brats_seg.cli import main
from brats_seg.data.synthetic import make_case


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
    assert scores["wt"]["dice"] == 1.0 and scores["tc"]["dice"] == 1.0
    et_ref, et_pred = (case.seg == 4).sum(), (pred_labels == 4).sum()
    assert scores["et"]["dice"] == 2 * et_ref / (et_ref + et_pred)


def test_binary_mask_and_brats2023_labels(tmp_path, capsys):
    case = make_case(1, 0, (32, 32, 16))
    seg23 = case.seg.copy()
    seg23[seg23 == 4] = 3
    ref = _save(tmp_path / "ref.nii.gz", seg23, case.affine)
    pred = _save(tmp_path / "mask.nii.gz", (case.seg > 0).astype(np.uint8), case.affine)
    main(["score", "--ref", ref, "--pred", pred, "--labels", "brats2023"])
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == ["wt"] and scores["wt"]["dice"] == 1.0 and scores["wt"]["hd95"] == 0.0


def test_different_grids_are_refused_with_one_sentence(tmp_path, capsys):
    case = make_case(1, 0, (32, 32, 16))
    ref = _save(tmp_path / "ref.nii.gz", case.seg, case.affine)
    pred = _save(tmp_path / "pred.nii.gz", case.seg[:, :, :-1], case.affine)
    with pytest.raises(SystemExit) as exc:
        main(["score", "--ref", ref, "--pred", pred])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not on the grid of" in err and "resample the prediction" in err and "Traceback" not in err
