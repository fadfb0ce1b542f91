"""brats-seg predict: masks on each input's own grid, from a model file or the registry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from brats_seg.cli import main as cli
from brats_seg.data.layouts import write_case
from brats_seg.data.synthetic import make_case
from brats_seg.errors import UserError
from brats_seg.inference.bundle import save_model
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.predict import predict_dirs

SLICE = {"size": 32, "margin": 4, "modalities": ["flair", "t1", "t1ce", "t2"]}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A real (untrained) U-Net saved as the train stage saves one: these tests are about grids and files."""
    torch_model = UNet(ModelConfig(in_channels=4, out_channels=1, base=4, depth=2)).eval()
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
    with pytest.raises(UserError, match="models:/brats-unet@champion is not in the registry at .*; promote a model"):
        predict_dirs([tmp_path / "in"], None, tmp_path / "out", "cpu")


def _case_folder(tmp_path, index=5):
    case = make_case(index, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, None, case.affine)
    return case, tmp_path / "in" / "_unlabelled" / case.case_id


def _resave(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.mark.parametrize(("defect", "message"), [
    ("4d", r"_t1\.nii\.gz is 4D \(shape 48x48x24x2\) but must be 3D; pass one volume per file\."),
    ("shape", r"_t1\.nii\.gz is not on the grid of .*_flair\.nii\.gz \(shape 48x48x23 vs 48x48x24, or different "
              r"affines\); resample the modalities to one grid first\."),
    ("affine", r"_t1\.nii\.gz is not on the grid of .*_flair\.nii\.gz .*resample the modalities"),
    ("nan", r"the t1 image .*_t1\.nii\.gz holds 3 NaN or infinite voxels; fix or replace the image\."),
    ("zero", r"the t1 image .*_t1\.nii\.gz holds only zeros; replace it"),
    ("garbage", r"_t1\.nii\.gz cannot be read as NIfTI \(.*\); check or replace the file"),
])
def test_inputs_are_checked_before_any_mask_is_written(tmp_path, model_file, defect, message):
    """A good case first, then a broken one: the sentence names the broken file and no mask is written."""
    good = make_case(6, 0, (48, 48, 24))
    write_case(tmp_path / "good", good.case_id, good.images, None, good.affine)
    case, folder = _case_folder(tmp_path)
    t1 = folder / f"{case.case_id}_t1.nii.gz"
    volume = case.images["t1"].astype(np.float32)
    if defect == "4d":
        _resave(t1, np.stack([volume, volume], axis=-1), case.affine)
    elif defect == "shape":
        _resave(t1, volume[:, :, :-1], case.affine)
    elif defect == "affine":
        _resave(t1, volume, case.affine @ np.diag([2.0, 1.0, 1.0, 1.0]))
    elif defect == "nan":
        volume[1, 1, 1:4] = np.nan
        _resave(t1, volume, case.affine)
    elif defect == "zero":
        _resave(t1, np.zeros_like(volume), case.affine)
    else:
        t1.write_bytes(b"not an image at all\n")
    with pytest.raises(UserError, match=message) as err:
        predict_dirs([tmp_path / "good", folder], str(model_file), tmp_path / "out", "cpu")
    assert "\n" not in str(err.value)
    if defect not in ("nan", "zero"):  # header checks run for every case before the first prediction
        assert not (tmp_path / "out").exists()


def test_out_must_be_a_folder(tmp_path, model_file):
    _, folder = _case_folder(tmp_path)
    (tmp_path / "out").write_text("mine")
    with pytest.raises(UserError, match="--out .*out is a file; pass a folder for the masks."):
        predict_dirs([folder], str(model_file), tmp_path / "out", "cpu")
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize(("cohort", "warning"), [
    ({"source": "synthetic", "train_cases": 17, "train_patients": 17},
     "was trained on synthetic cases only (17 patients): its masks demonstrate the pipeline"),
    ({"source": "local", "train_cases": 30, "train_patients": 12},
     "was trained on 12 real patients only (fewer than 100): check every mask"),
    ({"source": "local", "train_cases": 400, "train_patients": 369}, None),
    (None, "records no training cohort (trained by an older brats-seg): what it learnt from is unknown"),
], ids=["synthetic", "few-real", "enough-real", "unrecorded"])
def test_every_mask_says_what_made_it(tmp_path, caplog, cohort, warning):
    import json

    from brats_seg import __version__

    net = UNet(ModelConfig(in_channels=4, out_channels=1, base=4, depth=2)).eval()
    model = save_model(tmp_path / "unet.pt", net, ("wt",), SLICE,
                       extra={"fingerprint": "f00d" * 4, **({"cohort": cohort} if cohort else {})})
    case = make_case(1, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, None, case.affine)
    with caplog.at_level("INFO", logger="brats_seg"):
        (result,) = predict_dirs([tmp_path / "in"], str(model), tmp_path / "out", "cpu")
    sidecar = json.loads((tmp_path / "out" / f"{case.case_id}_mask.json").read_text())
    assert sidecar["model"] == str(model) and sidecar["fingerprint"] == "f00d" * 4
    assert sidecar["cohort"] == (cohort or {}) and sidecar["brats_seg_version"] == __version__
    assert sidecar["mask"] == result["mask"] and sidecar["tumour_ml"] == result["tumour_ml"] and sidecar["date"]
    descrip = nib.load(result["mask"]).header["descrip"].item().decode()
    assert descrip == f"brats-seg {__version__} {model}"[:79]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "trained" in r.getMessage()]
    if warning is None:
        assert sidecar["warning"] is None and not warnings
    else:
        assert warning in sidecar["warning"] and len(warnings) == 1 and warning in warnings[0]


def _constant_regions_model(path, logits: tuple[float, float, float], convention: str = "brats2020",
                            postprocess: dict | None = None):
    """A WT/TC/ET U-Net whose head ignores its input: each region's probability is sigmoid(logit) everywhere."""
    import torch

    net = UNet(ModelConfig(in_channels=4, out_channels=3, base=4, depth=2)).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(logits))
    extra = {"cohort": {"source": "local", "train_patients": 300, "label_convention": convention}}
    return save_model(path, net, ("wt", "tc", "et"), SLICE,
                      extra={**extra, **({"postprocess": postprocess} if postprocess else {})})


@pytest.mark.parametrize(("postprocess", "inside"), [
    (None, 4),  # none stored (an older model file): every voxel as the model says, enhancing
    ({"min_component_mm3": {}, "et_min_mm3": 1e9}, 1),  # ET smaller than this: relabelled necrotic core
    ({"min_component_mm3": {"wt": 1e9, "tc": 1e9, "et": 1e9}, "et_min_mm3": 0}, None),  # every component dropped
])
def test_the_post_processing_stored_with_the_model_is_applied_at_predict(tmp_path, postprocess, inside):
    model = _constant_regions_model(tmp_path / "regions.pt", (9.0, 9.0, 9.0), postprocess=postprocess)
    case = make_case(1, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, None, case.affine)
    cli(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu"])
    data = np.asarray(nib.load(str(tmp_path / "out" / f"{case.case_id}.nii.gz")).dataobj)
    assert set(np.unique(data).tolist()) == ({0} if inside is None else {0, inside})
    sidecar = json.loads((tmp_path / "out" / f"{case.case_id}.json").read_text())
    assert sidecar["postprocess"] == (postprocess or {"min_component_mm3": {}, "et_min_mm3": 0.0})


@pytest.mark.parametrize(("logits", "convention", "labels", "inside"), [
    ((9.0, -9.0, -9.0), "brats2020", None, 2),  # WT alone: oedema
    ((9.0, 9.0, -9.0), "brats2020", None, 1),  # WT and TC: necrotic core overwrites oedema
    ((9.0, 9.0, 9.0), "brats2020", None, 4),  # all three: enhancing
    ((9.0, 9.0, 9.0), "brats2023", None, 3),  # the training data's convention by default
    ((9.0, -9.0, -9.0), "brats2020", "msd", 1),  # asked for: the Decathlon's oedema is 1
])
def test_a_model_of_regions_writes_a_label_map_in_the_convention_asked(tmp_path, capsys, logits, convention, labels,
                                                                        inside):
    model = _constant_regions_model(tmp_path / "regions.pt", logits, convention)
    case = make_case(1, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, None, case.affine)
    cli(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu",
         "--wt-mask", *(["--labels", labels] if labels else [])])
    label_map = nib.load(str(tmp_path / "out" / f"{case.case_id}.nii.gz"))  # the name the BraTS evaluators match
    mask = np.asarray(nib.load(str(tmp_path / "out" / f"{case.case_id}_mask.nii.gz")).dataobj)
    data = np.asarray(label_map.dataobj)
    assert label_map.get_data_dtype() == np.uint8 and data.shape == case.images["flair"].shape
    assert np.array_equal(label_map.affine, nib.load(str(next((tmp_path / "in").rglob("*_flair.nii.gz")))).affine)
    assert mask.sum() > 0 and set(np.unique(data[mask > 0]).tolist()) == {inside} and not data[mask == 0].any()
    ml = mask.sum() / 1000  # 1 mm voxels
    out = capsys.readouterr().out
    tc, et = (ml if logits[1] > 0 else 0.0), (ml if logits[2] > 0 else 0.0)
    assert f"{case.case_id}: tumour {ml:.1f} ml (WT), TC {tc:.1f} ml, ET {et:.1f} ml -> " in out
    sidecar = json.loads((tmp_path / "out" / f"{case.case_id}.json").read_text())
    assert sidecar["labels"] == (labels or convention) and sidecar["volumes_ml"]["tc"] == pytest.approx(tc, abs=0.01)


def test_predicting_with_a_model_file_never_loads_mlflow(tmp_path, model_file):
    """MLflow is a second of every start: `brats-seg predict --model FILE` (what a clinic's machine runs) loads it
    only for a registry URI."""
    import os
    import subprocess
    import sys

    from tests.support.cohorts import PROJECT_ROOT

    case = make_case(2, 0, (48, 48, 24))
    write_case(tmp_path / "in", case.case_id, case.images, None, case.affine)
    args = ["predict", str(tmp_path / "in" / "_unlabelled" / case.case_id), "--model", str(model_file), "--out",
            str(tmp_path / "out"), "--device", "cpu"]
    code = (f"import sys; from brats_seg.cli import main; main({args!r}); "
            f"print('mlflow' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / f"{case.case_id}_mask.nii.gz").is_file()
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr[-2000:]
