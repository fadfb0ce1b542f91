"""brats-seg predict: masks on each input's own grid, from a model file or the registry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brats_seg.cli import main as cli
from brats_seg.data.layouts import write_case
from brats_seg.data.synthetic import make_case
from brats_seg.errors import UserError
from brats_seg.inference import save_model
from brats_seg.models.unet import UNet, UNetConfig
from brats_seg.predict import predict_dirs

SLICE = {"size": 32, "margin": 4, "modalities": ["flair", "t1", "t1ce", "t2"]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A real (untrained) U-Net saved as the train stage saves one: these tests are about grids and files."""
    torch_model = UNet(UNetConfig(in_channels=4, out_channels=1, base=4, depth=2)).eval()
    path = tmp_path_factory.mktemp("model") / "unet.pt"
    return save_model(path, torch_model, ("wt",), SLICE)


def test_real_cases_keep_shape_and_affine_exactly_and_hold_only_0_and_1(tmp_path, real_data, model_file, capsys):
    cases = [str(real_data / "BraTS2021_00006"), str(real_data / "BraTS-GLI-00000-000")]
    cli(["predict", *cases, "--model", str(model_file), "--out", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    for case_id, ref in (("BraTS2021_00006", "BraTS2021_00006_flair.nii.gz"),
                         ("BraTS-GLI-00000-000", "BraTS-GLI-00000-000-t2f.nii.gz")):
        src = nib.load(str(real_data / case_id / ref))
        mask = nib.load(str(tmp_path / f"{case_id}_mask.nii.gz"))
        assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine)
        assert nib.aff2axcodes(mask.affine) == ("L", "P", "S")
        assert mask.get_data_dtype() == np.uint8
        data = np.asarray(mask.dataobj)
        assert set(np.unique(data).tolist()) <= {0, 1}
        ml = data.sum() * np.prod(src.header.get_zooms()[:3]) / 1000
        assert f"{case_id}: tumour {ml:.1f} ml" in out


def test_ras_input_gets_a_ras_mask_that_lines_up(tmp_path, model_file):
    case = make_case(1, 0, (48, 48, 24))
    ras = {m: np.ascontiguousarray(v[::-1, ::-1]) for m, v in case.images.items()}
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    write_case(tmp_path / "lps", case.case_id, case.images, None, case.affine)
    write_case(tmp_path / "ras", case.case_id, ras, None, affine)
    (lps,) = predict_dirs([tmp_path / "lps"], str(model_file), tmp_path / "out_lps", "cpu")
    (ras_out,) = predict_dirs([tmp_path / "ras"], str(model_file), tmp_path / "out_ras", "cpu")
    a = np.asarray(nib.load(lps["mask"]).dataobj)
    b = nib.load(ras_out["mask"])
    assert nib.aff2axcodes(b.affine) == ("R", "A", "S")
    assert np.array_equal(a, np.asarray(b.dataobj)[::-1, ::-1])  # same anatomy, same mask


def test_a_case_missing_a_modality_fails_with_one_sentence(tmp_path, model_file):
    case = make_case(2, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, None, case.affine)
    folder = tmp_path / "in" / "_unlabelled" / case.case_id
    (folder / f"{case.case_id}_t1ce.nii.gz").unlink()
    with pytest.raises(UserError, match=f"case {case.case_id} has no t1ce image; the model needs flair, t1, t1ce, t2"):
        predict_dirs([folder], str(model_file), tmp_path / "out", "cpu")


def test_a_truncated_image_fails_with_one_sentence(tmp_path, model_file):
    case = make_case(4, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, case.seg, case.affine)
    flair = tmp_path / "in" / case.case_id / f"{case.case_id}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])
    with pytest.raises(UserError, match=r"_flair.nii.gz cannot be read .*check or replace the file"):
        predict_dirs([tmp_path / "in" / case.case_id], str(model_file), tmp_path / "out", "cpu")


def test_no_champion_in_the_registry_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    case = make_case(3, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, case.seg, case.affine)
    with pytest.raises(UserError, match="cannot load models:/brats-unet@champion from the registry"):
        predict_dirs([tmp_path / "in"], None, tmp_path / "out", "cpu")
