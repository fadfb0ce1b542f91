"""Hostile and careless input (issue 12): every row is the real CLI or stage run as a subprocess.

Each must exit with status 2, print exactly one line on stderr (``error: <sentence>``, no traceback) and
leave every file in its folder as it was: nothing deleted, moved, half-written or created.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from brats_seg.data.layouts import write_case
from brats_seg.data.synthetic import make_case
from brats_seg.inference.bundle import save_model
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from tests.support.cohorts import PROJECT_ROOT

SHAPE = (48, 48, 24)
SLICE = {"size": 32, "margin": 4, "modalities": ["flair", "t1", "t1ce", "t2"]}
Builder = Callable[[Path, Path], list[str]]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    net = UNet(ModelConfig(in_channels=4, out_channels=1, base=4, depth=2)).eval()
    return save_model(tmp_path_factory.mktemp("model") / "unet.pt", net, ("wt",), SLICE)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, or 'dir' / 'link -> target'."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# --- score ---------------------------------------------------------------------------------------------

def _label_map() -> tuple[np.ndarray, np.ndarray]:
    case = make_case(1, 0, (32, 32, 16))
    return case.seg, case.affine


def _score(tmp: Path, pred: np.ndarray | bytes | None, *extra: str, ref: np.ndarray | None = None,
           affine: np.ndarray | None = None) -> list[str]:
    seg, ref_affine = _label_map()
    nib.save(nib.Nifti1Image(seg if ref is None else ref, ref_affine), str(tmp / "ref.nii.gz"))
    pred_path = tmp / "pred.nii.gz"
    if isinstance(pred, bytes):
        pred_path.write_bytes(pred)
    elif pred is not None:
        nib.save(nib.Nifti1Image(pred, ref_affine if affine is None else affine), str(pred_path))
    return ["-m", "brats_seg.cli", "score", "--ref", str(tmp / "ref.nii.gz"), "--pred", str(pred_path), *extra]


def _with_values(*values: float) -> np.ndarray:
    seg = _label_map()[0].astype(np.float32)
    seg[0, 0, : len(values)] = values
    return seg


def _truncated_label_map(tmp: Path) -> bytes:
    seg, affine = _label_map()
    nib.save(nib.Nifti1Image(seg, affine), str(tmp / "whole.nii.gz"))
    data = (tmp / "whole.nii.gz").read_bytes()
    (tmp / "whole.nii.gz").unlink()
    return data[: len(data) // 2]


SCORE_ROWS = [
    ("score-not-nifti", lambda t, m: _score(t, b"id,dice\n1,0.9\n"), "pred.nii.gz cannot be read as NIfTI"),
    ("score-truncated-gzip", lambda t, m: _score(t, _truncated_label_map(t)), "pred.nii.gz cannot be read as NIfTI"),
    ("score-missing-file", lambda t, m: _score(t, None), "pred.nii.gz does not exist or is not a file"),
    ("score-4d-prediction", lambda t, m: _score(t, np.stack([_label_map()[0]] * 2, -1)),
     "pred.nii.gz is 4D (shape 32x32x16x2) but must be 3D"),
    ("score-grid-shape", lambda t, m: _score(t, _label_map()[0][:, :, :-1]), "is not on the grid of"),
    ("score-grid-affine", lambda t, m: _score(t, _label_map()[0], affine=np.diag([2.0, 2.0, 2.0, 1.0])),
     "is not on the grid of"),
    ("score-label-7", lambda t, m: _score(t, _with_values(7)), "outside the brats2020 labels {0, 1, 2, 4}: 7;"),
    ("score-label-3-under-brats2020", lambda t, m: _score(t, _with_values(3)), "labels {0, 1, 2, 4}: 3;"),
    ("score-fractional", lambda t, m: _score(t, _with_values(0.5)), "labels {0, 1, 2, 4}: 0.5;"),
    ("score-negative", lambda t, m: _score(t, _with_values(-1)), "labels {0, 1, 2, 4}: -1;"),
    ("score-nan", lambda t, m: _score(t, _with_values(np.nan)), "labels {0, 1, 2, 4}: nan;"),
    ("score-raw-intensities", lambda t, m: _score(t, make_case(1, 0, (32, 32, 16)).images["flair"]), " more; "),
    ("score-0-1-against-multi-label", lambda t, m: _score(t, (_label_map()[0] > 0).astype(np.uint8)),
     "holds only 0 and 1 but"),
    ("score-binary-given-a-label-map", lambda t, m: _score(t, _label_map()[0], "--labels", "binary"),
     "outside a 0/1 mask {0, 1}: 2, 4;"),
    ("score-reference-fractional", lambda t, m: _score(t, _label_map()[0], ref=_with_values(0.5)),
     "ref.nii.gz holds values outside the brats2020 labels {0, 1, 2, 4}: 0.5;"),
]


# --- predict -------------------------------------------------------------------------------------------

def _predict(tmp: Path, model: Path | str, change: Callable[[Path, str], None] | None = None,
             *extra: str) -> list[str]:
    case = make_case(2, 0, SHAPE)
    write_case(tmp / "in", case.case_id, case.images, None, case.affine)
    folder = tmp / "in" / "_unlabelled" / case.case_id
    if change:
        change(folder, case.case_id)
    return ["-m", "brats_seg.cli", "predict", str(folder), "--model", str(model), "--out", str(tmp / "out"),
            "--device", "cpu", *extra]


def _rewrite_t1(transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]):
    def change(folder: Path, case_id: str) -> None:
        path = folder / f"{case_id}_t1.nii.gz"
        img = nib.load(str(path))
        data, affine = transform(np.asarray(img.dataobj).astype(np.float32), img.affine)
        nib.save(nib.Nifti1Image(data, affine), str(path))
    return change


def _truncate_flair(folder: Path, case_id: str) -> None:
    path = folder / f"{case_id}_flair.nii.gz"
    path.write_bytes(path.read_bytes()[:300])


def _garbage_t2(folder: Path, case_id: str) -> None:
    (folder / f"{case_id}_t2.nii.gz").write_bytes(b"<html>404 not found</html>\n")


def _with_nan(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data[5, 5, 5] = np.nan
    return data, affine


class _RunsCode:
    """Unpickling this calls os.mkdir(target): a model file that would run code when loaded unsafely."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def _crafted_model(tmp: Path) -> Path:
    torch.save({"state_dict": _RunsCode(tmp / "payload-ran"), "config": {}, "regions": ["wt"], "slice": SLICE},
               tmp / "evil.pt")
    return tmp / "evil.pt"


def _junk_model(tmp: Path) -> Path:
    (tmp / "junk.pt").write_bytes(os.urandom(2048))
    return tmp / "junk.pt"


def _model_with(**fields) -> Builder:
    """predict with the module's model file, one of its fields replaced: a file that loads with weights_only but
    whose regions, slice settings or threshold cannot be used."""
    def build(tmp: Path, model: Path) -> list[str]:
        data = torch.load(model, weights_only=True)
        torch.save({**data, **fields}, tmp / "odd.pt")
        return _predict(tmp, tmp / "odd.pt")
    return build


def _decathlon_5_channels(tmp: Path, model: Path) -> list[str]:
    """A Decathlon-style 4D image with a fifth volume: which four are FLAIR, T1w, T1gd and T2w is unknown."""
    case = make_case(2, 0, SHAPE)
    volumes = np.stack([case.images[m] for m in ("flair", "t1", "t1ce", "t2", "t2")], -1).astype(np.float32)
    (tmp / "Task01" / "imagesTs").mkdir(parents=True)
    nib.save(nib.Nifti1Image(volumes, case.affine), str(tmp / "Task01" / "imagesTs" / "BRATS_900.nii.gz"))
    return ["-m", "brats_seg.cli", "predict", str(tmp / "Task01"), "--model", str(model), "--out", str(tmp / "out"),
            "--device", "cpu"]


def _out_is_a_file(tmp: Path, model: Path) -> list[str]:
    (tmp / "out").write_text("my notes\n")
    return _predict(tmp, model)


PREDICT_ROWS = [
    ("predict-4d-modality", lambda t, m: _predict(t, m, _rewrite_t1(lambda d, a: (np.stack([d, d], -1), a))),
     "_t1.nii.gz is 4D (shape 48x48x24x2) but must be 3D"),
    ("predict-shapes-differ", lambda t, m: _predict(t, m, _rewrite_t1(lambda d, a: (d[:, :-2], a))),
     "_t1.nii.gz is not on the grid of"),
    ("predict-affines-differ", lambda t, m: _predict(t, m, _rewrite_t1(lambda d, a: (d, a @ np.diag([1, 1, 3, 1])))),
     "_t1.nii.gz is not on the grid of"),
    ("predict-nan-voxels", lambda t, m: _predict(t, m, _rewrite_t1(_with_nan)), "holds 1 NaN or infinite voxels"),
    ("predict-all-zero-modality", lambda t, m: _predict(t, m, _rewrite_t1(lambda d, a: (0 * d, a))),
     "holds only zeros"),
    ("predict-missing-modality", lambda t, m: _predict(t, m, lambda f, c: (f / f"{c}_t1ce.nii.gz").unlink()),
     "has no t1ce image; the model needs flair, t1, t1ce, t2"),
    ("predict-truncated-gzip", lambda t, m: _predict(t, m, _truncate_flair), "_flair.nii.gz cannot be read"),
    ("predict-not-nifti", lambda t, m: _predict(t, m, _garbage_t2),
     "_t2.nii.gz cannot be read as NIfTI (ImageFileError: File BraTS20_Synthetic_002_t2.nii.gz is not a gzip file)"),
    ("predict-junk-model", lambda t, m: _predict(t, _junk_model(t)), "junk.pt"),
    ("predict-crafted-pickle-model", lambda t, m: _predict(t, _crafted_model(t)), "evil.pt"),
    ("predict-missing-model", lambda t, m: _predict(t, t / "nope.pt"), "nope.pt does not exist; pass a model file"),
    ("predict-decathlon-5-channels", _decathlon_5_channels,
     "BRATS_900.nii.gz has 5 volumes but a Decathlon image holds 4 (FLAIR, T1w, T1gd, T2w, in that order)"),
    ("predict-model-slice-empty", _model_with(slice={}), "odd.pt holds invalid slice settings {} (size, margin and "),
    ("predict-model-threshold-abc", _model_with(threshold="abc"),
     "odd.pt holds an invalid threshold 'abc' (a number between 0 and 1); pass a model written by the train stage"),
    ("predict-model-regions-5", _model_with(regions=5), "odd.pt holds invalid regions 5 (distinct names among wt, "),
    ("predict-model-cohort-odd", _model_with(cohort={"train_patients": "many", "label_convention": "brats2099"}),
     "odd.pt holds an invalid training cohort {'train_patients': 'many', 'label_convention': 'brats2099'}"),
    ("predict-model-postprocess-odd", _model_with(postprocess={"min_component_mm3": {"wt": -5}, "et_min_mm3": 0}),
     "odd.pt holds invalid post-processing {'min_component_mm3': {'wt': -5}, 'et_min_mm3': 0} ("),
    ("predict-model-size-unfit", _model_with(slice={**SLICE, "size": 30}),
     "odd.pt holds an invalid slice size 30 (an integer from 8 to 1024, a multiple of 2**depth = 4)"),
    ("predict-case-not-a-folder", lambda t, m: ["-m", "brats_seg.cli", "predict", str(t / "nothing"), "--model",
                                                str(m), "--device", "cpu"], "is not a folder"),
    ("predict-out-is-a-file", _out_is_a_file, "is a file; pass a folder for the masks"),
]


# --- params set and the stages that read params ----------------------------------------------------------

def _params_file(tmp: Path, **changes: object) -> Path:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        section, leaf = key.split("__")
        params[section][leaf] = value
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _params_set(*assignments: str) -> Builder:
    def build(tmp: Path, model: Path) -> list[str]:
        _params_file(tmp)
        return ["-m", "brats_seg.cli", "params", "set", *assignments]
    return build


def _stage(name: str, **changes: object) -> Builder:
    def build(tmp: Path, model: Path) -> list[str]:
        return ["-m", f"stages.{name}", "--params", str(_params_file(tmp, **changes))]
    return build


PARAMS_ROWS = [
    ("params-set-epochs-abc", _params_set("train.epochs=abc"), "train.epochs must be an integer, got 'abc'."),
    ("params-set-epochs-negative", _params_set("train.epochs=-1"), "train.epochs must be an integer >= 1, got -1."),
    ("params-set-depth-0", _params_set("train.depth=0"), "train.depth must be an integer >= 1, got 0."),
    ("params-set-lr-negative", _params_set("train.lr=-0.1"), "train.lr must be a number > 0, got -0.1."),
    ("params-set-batch-size-0", _params_set("train.batch_size=0"), "train.batch_size must be an integer >= 1"),
    ("params-set-size-60-depth-3", _params_set("slice.size=60", "train.depth=3"),
     "slice.size must be a multiple of 2**train.depth = 8 (train.depth is 3), got 60"),
    ("params-set-bad-fraction", _params_set("validate.max_bad_fraction=1.5"), "must be a number from 0 to 1"),
    ("params-set-unknown-key", _params_set("train.epoch=3"), "train.epoch is not a known key"),
    ("params-set-register-alias-champion", _params_set("register.alias=champion"),
     "register.alias must be another alias than champion (the promotion gate alone moves it"),
    ("params-set-model-name-slash", _params_set("register.model_name=team/brats"),
     "register.model_name must be a registry name of letters, digits, '.', '_' and '-' (no '/'"),
    ("params-set-not-key-value", _params_set("train.epochs"), "is not KEY=VALUE"),
    ("params-set-bad-yaml", _params_set("slice.split=[0.7"), "does not hold a YAML value"),
    ("params-missing-file", lambda t, m: ["-m", "brats_seg.cli", "params", "set", "train.epochs=3"],
     "params.yaml does not exist"),
    ("stage-train-epochs-negative", _stage("train", train__epochs=-1, train__resume=False),
     "train.epochs must be an integer >= 1, got -1."),
    ("stage-train-depth-0", _stage("train", train__depth=0), "train.depth must be an integer >= 1, got 0."),
    ("stage-train-lr-negative", _stage("train", train__lr=-0.1), "train.lr must be a number > 0, got -0.1."),
    ("stage-train-batch-size-0", _stage("train", train__batch_size=0), "train.batch_size must be an integer >= 1"),
    ("stage-slice-size-60-depth-3", _stage("slice", slice__size=60, train__depth=3),
     "slice.size must be a multiple of 2**train.depth = 8"),
    ("stage-train-size-60-depth-3", _stage("train", slice__size=60, train__depth=3),
     "slice.size must be a multiple of 2**train.depth = 8"),
    ("stage-validate-unknown-key", _stage("validate", validate__max_bad=0.5), "validate.max_bad is not a known key"),
    ("stage-register-alias-champion", _stage("register", register__alias="Champion"),
     "register.alias must be another alias than champion"),
]


# --- the probe's list (issue 17): paths the user names, archives, case ids -----------------------------------

def _users_folder(tmp: Path) -> Path:
    (tmp / "mine").mkdir(exist_ok=True)
    (tmp / "mine" / "notes.txt").write_text("the user's own file")
    return tmp / "mine"


def _params_set_raw_dir(tmp: Path, model: Path) -> list[str]:
    _params_file(tmp)
    _users_folder(tmp)
    return ["-m", "brats_seg.cli", "params", "set", "base.raw_dir=mine"]


def _download(source: Callable[[Path], Path] | None = None, raw_dir: str | None = None) -> Builder:
    """The download stage on a local source made by ``source`` (else synthetic), caches outside ``tmp``."""
    def build(tmp: Path, model: Path) -> list[str]:
        params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
        params["base"].update(cache_dir=str(tmp.parent / "cache"), raw_dir="raw")  # base paths: relative, in cwd
        if raw_dir is not None:
            params["base"]["raw_dir"] = raw_dir
        if source is not None:
            params["download"]["source"] = "local"
            params["download"]["local"]["path"] = str(source(tmp))
        else:
            params["download"]["synthetic"].update(n_cases=1, shape=[16, 16, 8])
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return ["-m", "stages.download", "--params", str(tmp / "params.yaml")]
    return build


def _download_into_users_folder(tmp: Path, model: Path) -> list[str]:
    _users_folder(tmp)
    return _download(raw_dir="mine")(tmp, model)


def _zip_with_clash(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "cases.zip", "w") as zf:
        zf.writestr("BraTS20_001/BraTS20_001_flair.nii.gz", b"x")
        zf.writestr("BraTS20_001/BraTS20_001_flair.nii.gz/inner.txt", b"y")
    return tmp / "cases.zip"


def _zip_crc_damaged(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "cases.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("BraTS20_001/BraTS20_001_flair.nii.gz", b"A" * 4096)
    data = bytearray((tmp / "cases.zip").read_bytes())
    data[data.index(b"A" * 4096) + 2048] ^= 0xFF
    (tmp / "cases.zip").write_bytes(bytes(data))
    return tmp / "cases.zip"


def _case_id_dotdot(tmp: Path) -> Path:
    case = make_case(1, 0, (16, 16, 8))
    folder = tmp / "cases" / "one"
    folder.mkdir(parents=True)
    for kind, data in {**case.images, "seg": case.seg}.items():
        nib.save(nib.Nifti1Image(data, case.affine), str(folder / f".._{kind}.nii.gz"))
    return tmp / "cases"


PROBE_ROWS = [
    ("params-set-raw-dir-users-folder", _params_set_raw_dir,
     "base.raw_dir mine is an existing folder that brats-seg did not create"),
    ("params-set-raw-dir-root", _params_set("base.raw_dir=/"), "base.raw_dir must be a relative path inside the"),
    ("params-set-slices-dir-root", _params_set("base.slices_dir=/"), "base.slices_dir must be a relative path"),
    ("params-set-local-path-nonexistent", _params_set("download.local.path=/nonexistent"),
     "download.local.path /nonexistent does not exist"),
    ("stage-download-into-users-folder", _download_into_users_folder, "is an existing folder that brats-seg did not"),
    ("stage-download-zip-file-and-folder", _download(_zip_with_clash),
     "holds both a file and a folder named 'BraTS20_001/BraTS20_001_flair.nii.gz'"),
    ("stage-download-zip-bad-crc", _download(_zip_crc_damaged), "is damaged (BadZipFile: Bad CRC-32"),
    ("stage-download-case-id-dotdot", _download(_case_id_dotdot), "case id '..' (from "),
]


@pytest.mark.slow  # a brats-seg or stage process per case
@pytest.mark.parametrize(("build", "expected"),
                         [pytest.param(b, e, id=i) for i, b, e in SCORE_ROWS + PREDICT_ROWS + PARAMS_ROWS + PROBE_ROWS])
def test_bad_input_is_one_sentence_and_loses_nothing(tmp_path, model_file, build, expected):
    work = tmp_path / "work"
    work.mkdir()
    args = build(work, model_file)
    before = snapshot(work)
    proc = run(args, work)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert expected in lines[0], lines[0]
    assert snapshot(work) == before  # nothing deleted, changed or created (no payload ran, no half a mask)


def test_make_clean_removes_the_outputs_params_yaml_names_and_nothing_a_user_made(tmp_path):
    """`make clean` where dvc.lock records every output (`dvc commit`, as after a `dvc repro`) and base.raw_dir has
    moved: the outputs at the paths params.yaml gives them now go; the user's cohort kept where raw_dir used to be,
    a folder of theirs and an edited file at output paths, the checkpoints (until asked), downloads, the source
    manifest and the MLflow store stay, and each output kept is said with its reason. `dvc repro` (its first stage)
    and the flow refuse an output path that holds the user's folder before dvc deletes it."""
    from brats_seg.errors import UserError
    from brats_seg.io.atomic import mark_output_dir
    from brats_seg.orchestration.outputs import stage_outputs
    from brats_seg.sections import check_workspace_params
    from tests.support.projects import make_dvc_project, run_cmd

    write_params = make_dvc_project(tmp_path / "project", {"base": {"raw_dir": "data/cohort-b"}})
    repo = write_params.path
    outputs = [rel for rel, _ in stage_outputs(repo)]
    assert "data/cohort-b" in outputs and "data/raw" not in outputs and "data/source.json" not in outputs  # persist
    for rel in outputs:  # as the stages write them: a folder carries the marker
        if Path(rel).suffix:
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(rel)
        else:
            (mark_output_dir(repo / rel) / "part.bin").write_text(rel)
    ckpt = "data/cache/checkpoints/0123456789abcdef"
    kept = {"data/raw/BraTS20_001/BraTS20_001_flair.nii.gz": "the user's cohort", "reports/my-notes.txt": "notes",
            "data/source.json": "{}", "data/cache/downloads/Task01.tar": "tar", "mlflow/mlflow.db": "db",
            "data/cache/raw-0ld/BraTS20_002/x.nii.gz": "an unmarked staging folder", f"{ckpt}.pt": "weights",
            f"{ckpt}-fold1.pt": "weights", f"{ckpt}.run.json": "{}", "data/cache/checkpoints/my-best.pt": "mine",
            "reports/pictures/holiday.png": "the user's picture"}
    for rel, text in kept.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (mark_output_dir(repo / "data/cache/raw-5ca1ed") / "x.nii.gz").write_text("staged")  # an interrupted download
    run_cmd(["dvc", "commit", "-f"], repo)  # dvc.lock records every output
    (repo / "reports/eval.json").write_text("edited by hand")
    (repo / "reports/overlays/.brats-seg-output").unlink()  # an output of an older version: dvc.lock records it
    write_params({"base": {"raw_dir": "data/cohort-b", "overlays_dir": "reports/pictures"}})  # the user's folder

    refused = run_cmd(["dvc", "repro"], repo, check=False)
    said = ("error: base.overlays_dir is reports/pictures, a folder brats-seg did not write, and dvc repro deletes a "
            "stage's outputs before it runs; nothing was deleted: point base.overlays_dir at a new or empty folder, or "
            "move what reports/pictures holds elsewhere.")
    assert refused.returncode != 0 and said in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    with pytest.raises(UserError) as flow_said:
        check_workspace_params(repo)
    assert f"error: {flow_said.value}" == said
    assert (repo / "reports/pictures/holiday.png").read_text() == "the user's picture"

    (repo / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    make = ["make", "-s", "-f", str(PROJECT_ROOT / "Makefile"), "-o", ".venv/.installed"]
    said = subprocess.run([*make, "clean"], cwd=repo, check=True, capture_output=True, text=True).stdout
    left = {str(p.relative_to(repo)) for folder in ("data", "models", "reports", "mlflow")
            for p in (repo / folder).rglob("*") if p.is_file() and p.name != ".gitignore"}
    assert left == {*kept, "reports/eval.json", "reports/overlays/part.bin"}, said  # overlays: no output now
    assert "kept reports/pictures: a folder brats-seg did not write (no .brats-seg-output in it)" in said
    assert "kept reports/eval.json: not the file dvc.lock records" in said and "kept data/cache/raw-0ld" in said
    assert "data/raw" not in said and said.startswith("removed data/cohort-b, data/validated/manifest.parquet"), said
    assert "kept: training checkpoints (data/cache/checkpoints; brats-seg clean checkpoints, or make " in said
    write_params({"base": {"raw_dir": "data/cohort-b"}})  # back: the older output, recorded by dvc.lock, goes
    said = subprocess.run([*make, "clean"], cwd=repo, check=True, capture_output=True, text=True).stdout
    assert said.startswith("removed reports/overlays (") and not (repo / "reports/overlays").exists(), said

    said = subprocess.run([*make, "clean", "CLEAN_CHECKPOINTS=1"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout
    assert not [rel for rel in kept if rel.startswith(ckpt) and (repo / rel).exists()]  # the run's checkpoints went
    assert (repo / "data/cache/checkpoints/my-best.pt").read_text() == "mine"
    assert "kept data/cache/checkpoints: the checkpoints went; my-best.pt is not one" in said, said
    (repo / "data/cache/checkpoints/my-best.pt").unlink()
    (repo / f"{ckpt}.pt").write_text("weights")
    subprocess.run([*make, "clean-checkpoints"], cwd=repo, check=True, capture_output=True)
    assert not (repo / "data/cache/checkpoints").exists()
    assert (repo / "data/raw/BraTS20_001/BraTS20_001_flair.nii.gz").read_text() == "the user's cohort"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_mlflow_server_never_prints_the_database_password(tmp_path):
    import signal

    backend = f"postgresql://mlflow:S3cretPW@127.0.0.1:{_free_port()}/mlflow"  # nothing listens: mlflow retries
    proc = subprocess.Popen(["make", "-s", "-C", str(PROJECT_ROOT), "mlflow-server", f"BACKEND={backend}",
                             f"ARTIFACTS={tmp_path / 'artifacts'}", f"PORT={_free_port()}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:  # until mlflow has tried the backend once (a few seconds); it would retry for minutes
        for line in proc.stdout:
            lines.append(line)
            if "Connection refused" in line or len(lines) > 200:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        lines.append(proc.communicate()[0])
    out = "".join(lines)
    assert "mlflow server --backend-store-uri 'postgresql://mlflow:***@127.0.0.1:" in out, out
    assert "Connection refused" in out and "S3cretPW" not in out, out  # mlflow did try the backend, quietly


def test_make_clean_tracking_masks_the_tracking_uri(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": "https://alice:hunter2@mlflow.example.org"}
    proc = subprocess.run(["make", "-s", "-f", str(PROJECT_ROOT / "Makefile"), "clean-tracking"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert "MLFLOW_TRACKING_URI=https://alice:***@mlflow.example.org is not touched" in proc.stdout, proc.stdout
    assert "hunter2" not in proc.stdout + proc.stderr


def test_make_clean_tracking_says_what_it_deletes_and_needs_confirmation(tmp_path):
    (tmp_path / "mlflow" / "artifacts").mkdir(parents=True)
    (tmp_path / "mlflow" / "mlflow.db").write_text("registry")
    make = ["make", "-s", "-f", str(PROJECT_ROOT / "Makefile"), "clean-tracking"]
    refused = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode != 0 and "mlflow/mlflow.db" in refused.stdout and "CONFIRM=1" in refused.stdout
    assert (tmp_path / "mlflow" / "mlflow.db").read_text() == "registry"
    subprocess.run([*make, "CONFIRM=1"], cwd=tmp_path, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    assert not (tmp_path / "mlflow" / "mlflow.db").exists() and not (tmp_path / "mlflow" / "artifacts").exists()


@pytest.mark.slow  # a brats-seg process against an unreachable server
@pytest.mark.parametrize("command", ["predict", "lineage"])
def test_an_unreachable_tracking_server_is_one_masked_sentence_within_30_s(tmp_path, command):
    import time

    work = tmp_path / "work"
    work.mkdir()
    args = _predict(work, "models:/brats-unet@champion") if command == "predict" else \
        ["-m", "brats_seg.cli", "lineage", "--case", "BraTS20_Training_001"]
    before = snapshot(work)
    uri = f"http://alice:hunter2@127.0.0.1:{_free_port()}"  # a closed port: nothing listens there
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and took < 30, (took, proc.stderr)
    assert lines[0].startswith(f"error: the tracking server at http://alice:***@127.0.0.1:{uri.rsplit(':', 1)[1]} is "
                               f"not reachable (Connection refused): start it or fix MLFLOW_TRACKING_URI."), lines[0]
    assert "hunter2" not in proc.stdout + proc.stderr and "promote" not in proc.stderr
    assert snapshot(work) == before


def test_credentials_are_masked_in_every_sentence_the_cli_prints():
    from brats_seg.errors import mask_credentials

    text = "at postgresql://mlflow:S3cret@db:5432/x and https://bob:p%40ss@host/p, not https://carol@host or a:b@c"
    assert mask_credentials(text) == ("at postgresql://mlflow:***@db:5432/x and https://bob:***@host/p, not "
                                      "https://carol@host or a:b@c")


# --- a bad param under the flow: one sentence, exit 2 (the flow checks params.yaml first; a stage's own sentence
# passes through dvc and Prefect unchanged) -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("bad", "expected"), [
    ({"train": {"epochs": -1}}, "error: params.yaml: train.epochs must be an integer >= 1, got -1."),
    ({"download": {"source": "local", "local": {"path": "/nonexistent"}}},
     "error: dvc repro source: download.local.path '/nonexistent' does not exist; point it at a folder"),
], ids=["checked-first", "said-by-a-stage"])
def test_a_bad_param_under_the_flow_is_one_sentence_and_exit_2(tmp_path, bad, expected):
    from tests.support.prefect_db import seeded_home
    from tests.support.projects import make_dvc_project

    project = make_dvc_project(tmp_path / "project", bad)
    env = {**os.environ, "PYTHONPATH": str(project.path), "PYTHONWARNINGS": "ignore",
           "PREFECT_HOME": str(seeded_home(tmp_path / "prefect"))}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=project.path, env=env, capture_output=True,
                          text=True, timeout=300)
    said = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(said) == 1 and said[0].startswith(expected), proc.stderr
    assert not (project.path / "data" / "raw").exists()  # no stage after the refusal ran
    # a value params.yaml itself gets wrong is said before Prefect's temporary server starts (seconds sooner)
    assert ("Starting temporary server" in proc.stderr) == (bad.get("train") is None), proc.stderr


# --- leaks: what a stage or flow starts dies with it ----------------------------------------------------------

def _children_once_started(proc: subprocess.Popen, n: int, name: str = "", timeout_s: float = 120.0) -> list:
    import time

    import psutil

    parent, deadline = psutil.Process(proc.pid), time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        found = [c for c in parent.children(recursive=True) if name in " ".join(c.cmdline())]
        if len(found) >= n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} child processes {name!r} appeared: {proc.communicate()}")


def _gone_within(children: list, seconds: float) -> list:
    import psutil

    _, alive = psutil.wait_procs(children, timeout=seconds)
    for child in alive:  # do not leak them from the test either
        child.kill()
    return alive


def test_killing_a_stage_kills_its_pool_workers(tmp_path):
    import signal

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["base"].update(cache_dir=str(tmp_path / "cache"), raw_dir="raw")
    params["download"].update(workers=2, synthetic={**params["download"]["synthetic"], "n_cases": 50})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.download", "--params", str(tmp_path / "params.yaml")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = _children_once_started(proc, 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone_within(workers, 5.0) == []


@pytest.mark.slow
def test_killing_a_flow_kills_prefects_temporary_server(tmp_path):
    import signal

    from tests.support.prefect_db import seeded_home
    from tests.support.projects import make_dvc_project

    project = make_dvc_project(tmp_path / "project")
    env = {**os.environ, "PYTHONPATH": str(project.path), "PYTHONWARNINGS": "ignore",
           "PREFECT_HOME": str(seeded_home(tmp_path / "prefect"))}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline"], cwd=project.path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = _children_once_started(proc, 1, "uvicorn")
    assert "prefect.server.api.server:create_app" in " ".join(server[0].cmdline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone_within(server, 5.0) == []


# --- a full disk: one sentence naming the full disk and its free space (a real small tmpfs where this runs as
# root; the fault tests below inject the same errors at the write call everywhere) -------------------------------

@contextlib.contextmanager
def _small_disk(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _stage_in(work: Path, name: str) -> subprocess.CompletedProcess:
    return run(["-m", f"stages.{name}", "--params", "params.yaml"], work)


def _one_sentence(proc: subprocess.CompletedProcess, *parts: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if "WARNING" not in line and " INFO " not in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(p in lines[0] for p in parts), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_a_full_disk_during_slice_and_train_is_one_sentence(tmp_path):
    from tests.support.projects import TINY_PARAMS, merge_params

    work = tmp_path / "work"
    work.mkdir()
    params = merge_params(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()), TINY_PARAMS)
    params["base"]["slices_dir"] = "small/slices"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "validate"):
        assert _stage_in(work, stage).returncode == 0
    with _small_disk(work / "small", "200k"):
        said = _one_sentence(_stage_in(work, "slice"), f"the disk holding {work}/small/slices/shards is full "
                             "while writing ", "KB free of 200 KB); free space there or point that path at a disk")
    assert _stage_in(work, "slice").returncode == 0, said  # with room, the same stage runs
    with _small_disk(work / "mlflow", "300k"):
        _one_sentence(_stage_in(work, "train"), f"the disk holding {work}/mlflow/mlflow.db is full while writing the "
                      "MLflow tracking database (", "free of 300 KB); free space there or set MLFLOW_TRACKING_URI")


def test_disk_full_at_the_write_call_is_one_sentence(tmp_path, capsys):
    import errno
    import sqlite3

    from brats_seg.errors import DiskFullError, exit_on_user_error
    from brats_seg.io.atomic import atomic_path

    with pytest.raises(DiskFullError, match=rf"the disk holding {tmp_path} is full while writing out.bin \(.* free of"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # no half-written file left

    @exit_on_user_error
    def logs_a_metric() -> None:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as exc:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full [SQL: INSERT ...]") from exc

    with pytest.raises(SystemExit) as stopped:
        logs_a_metric()
    err = capsys.readouterr().err.splitlines()
    assert stopped.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: the disk holding ") and "is full while writing the MLflow tracking database (" \
        in err[0] and "set MLFLOW_TRACKING_URI to a store on a disk with room" in err[0], err

    @exit_on_user_error
    def fails_otherwise() -> None:
        raise RuntimeError("not a full disk")

    with pytest.raises(RuntimeError, match="not a full disk"):  # other errors stay what they are
        fails_otherwise()


def test_a_path_set_that_would_lose_a_folder_is_refused_before_anything_is_written(tmp_path):
    """`brats-seg params set` of an output path that holds a folder of the user's, or that another output already
    uses (the flow's dvc repro of one stage would delete the other's), is one sentence; params.yaml and the folder
    stay as they were. The flow's check says the same of a params.yaml edited by hand."""
    from brats_seg.errors import UserError
    from brats_seg.sections import check_workspace_params
    from tests.support.projects import make_dvc_project

    write_params = make_dvc_project(tmp_path / "project")
    repo = write_params.path
    (repo / "my_pictures").mkdir()
    (repo / "my_pictures" / "note.txt").write_text("mine")
    before = (repo / "params.yaml").read_text()
    cli = [sys.executable, "-m", "brats_seg.cli", "params", "set"]
    for value, said in (("my_pictures", "error: base.overlays_dir is my_pictures, a folder brats-seg did not write, "
                                        "and dvc repro deletes a stage's outputs before it runs; nothing was deleted"),
                        ("data/raw", "error: base.overlays_dir is data/raw, the same path as base.raw_dir (data/raw), "
                                     "and dvc repro deletes a stage's outputs before it runs; nothing was deleted: "
                                     "give base.overlays_dir a path of its own."),
                        ("data/slices/pictures", "error: base.overlays_dir is data/slices/pictures, inside "
                                                 "base.slices_dir (data/slices)")):
        proc = subprocess.run([*cli, f"base.overlays_dir={value}"], cwd=repo, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith(said) and proc.stderr.count("\n") == 1, proc.stderr
    assert (repo / "params.yaml").read_text() == before and (repo / "my_pictures" / "note.txt").read_text() == "mine"
    write_params({"base": {"validation_reports": "data/slices"}})  # by hand
    with pytest.raises(UserError, match=r"^base.slices_dir is data/slices, the same path as base.validation_reports"):
        check_workspace_params(repo)


def test_a_broken_dvc_lock_is_one_sentence_for_clean_and_the_checks(tmp_path):
    """dvc.lock half-edited by hand: `brats-seg clean` says so in one sentence and removes nothing."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: [\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "unet.pt").write_text("weights")
    proc = run(["-m", "brats_seg.cli", "clean"], tmp_path)
    said = proc.stderr.rstrip()
    assert proc.returncode == 2 and said.startswith("error: dvc.lock is not valid YAML (") and said.endswith(
        "restore it (git checkout -- dvc.lock) or rebuild it (dvc commit -f)."), proc.stderr
    assert proc.stderr.count("\n") == 1 and (tmp_path / "models" / "unet.pt").read_text() == "weights"



def test_a_broken_dvc_yaml_is_one_sentence_for_clean(tmp_path):
    """dvc.yaml half-edited by hand: `brats-seg clean` says so in one sentence (it read dvc.yaml with a traceback)."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train: [\n")
    proc = run(["-m", "brats_seg.cli", "clean"], tmp_path)
    said = proc.stderr.rstrip()
    assert proc.returncode == 2 and said.startswith("error: dvc.yaml is not valid YAML (") and said.endswith(
        "fix it or restore it (git checkout -- dvc.yaml)."), proc.stderr
    assert proc.stderr.count("\n") == 1
