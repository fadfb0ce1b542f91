"""The registered model against a real sqlite MLflow store in a temporary directory: it loads with mlflow and torch
alone (brats-seg not importable, unpickling disabled) and predicts what the project's own inference predicts; its
artifacts hold no pickle; a crafted pickle where the weights belong is refused by every loader and never runs.
Also: experiments are tagged as model development, so that MLflow's UI opens on their runs."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mlflow
from brats_seg import registered_model, tracking
from brats_seg.checkpoint import load_checkpoint
from brats_seg.cli import main as cli
from brats_seg.config import BaseParams
from brats_seg.data.preprocess import preprocess_case
from brats_seg.data.synthetic import make_case
from brats_seg.errors import UserError
from brats_seg.inference import load_model, predict_slices, save_model
from brats_seg.io.tables import write_json
from brats_seg.models.unet import UNet, UNetConfig
from brats_seg.predict import resolve_model
from brats_seg.runners.register import RegisterParams, register_stage, synthetic_example
from tests.conftest import write_synthetic_cohort

NAME = "brats-unet-test"
URI = f"models:/{NAME}@challenger"
SLICE = {"size": 16, "margin": 2, "modalities": ["flair", "t2"]}
REGIONS = ("wt", "tc")
CRAFTED = "was refused: it holds Python objects other than tensors and plain values, which could run code"


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _unet(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net with random weights, normalisation statistics moved off their defaults (a few training-mode
    passes) and a head scaled up, so that every parameter and buffer shapes probabilities that vary."""
    torch.manual_seed(seed)
    net = UNet(config)
    with torch.no_grad():
        for _ in range(3):
            net.train()(torch.randn(4, config.in_channels, 16, 16) * 2 + 0.5)
        net.head.weight.mul_(50)
    return net.eval()


def _register(store: Path) -> Path:
    """models/unet.pt written as the train stage writes it, registered by the register stage's own code under
    the default base paths; returns the model file."""
    model_file = save_model(store / "models" / "unet.pt", _unet(UNetConfig(in_channels=2, out_channels=2, base=4,
                                                                           depth=1)),
                            REGIONS, SLICE, extra={"split_digest": "split-a", "fingerprint": "f" * 16})
    with tracking.start_run("brats-seg") as run:
        run.log_metrics({"test_wt_dice_mean": 0.8})
    write_json(store / "reports" / "train.json", {"run_id": run.run_id})
    write_json(store / "reports" / "eval.json", {"wt": {"dice_mean": 0.8, "hd95_median": 3.0}})
    register_stage(RegisterParams(model_name=NAME), BaseParams())
    return model_file


def _slices() -> np.ndarray:
    """A synthetic case preprocessed as the slice stage does: float32 ``[Z, 2, 16, 16]``."""
    case = make_case(1, 0, (48, 48, 24))
    volumes = np.stack([case.images[m] for m in SLICE["modalities"]]).astype(np.float32)
    return preprocess_case(volumes, case.affine, SLICE["size"], SLICE["margin"]).images.astype(np.float32)


# Run by a python that cannot import brats-seg and cannot unpickle: load the registered model, predict.
APP = """
import json, pickle, sys


def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")


class Refused:
    __init__ = refuse


pickle.load = pickle.loads = refuse
pickle.Unpickler = Refused
try:
    import brats_seg
except ImportError:
    pass
else:
    sys.exit(f"brats_seg is importable from {brats_seg.__file__}")

import mlflow
import numpy as np

model = mlflow.pyfunc.load_model(sys.argv[1], model_config={"device": "cpu", "batch_size": 7})
np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
loaded = model.unwrap_python_model()
with open(sys.argv[4], "w") as fh:
    json.dump({"metadata": model.metadata.metadata, "brats_modules": [m for m in sys.modules if "brats" in m],
               "batch_size": loaded.batch_size, "device": str(next(loaded.net.parameters()).device)}, fh)
"""


def _run_app(store: Path, slices: np.ndarray) -> tuple[np.ndarray, dict]:
    """Load URI and predict ``slices`` in a fresh interpreter: ``-S`` skips the site-packages .pth files (the
    editable install among them), so only the venv's installed packages are importable."""
    app = store / "app"
    app.mkdir()
    (app / "load.py").write_text(APP)
    np.save(app / "slices.npy", slices)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app), "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    proc = subprocess.run([sys.executable, "-S", str(app / "load.py"), URI, str(app / "slices.npy"),
                           str(app / "out.npy"), str(app / "info.json")], cwd=app, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(app / "out.npy"), json.loads((app / "info.json").read_text())


def test_it_loads_without_brats_seg_or_unpickling_and_predicts_what_the_project_predicts(store):
    model_file = _register(store)
    slices = _slices()
    out, info = _run_app(store, slices)
    assert info["brats_modules"] == []
    assert info["batch_size"] == 7 and info["device"] == "cpu"  # the load options reach the model
    bundle = load_model(model_file)
    fp16 = predict_slices(bundle.model, slices, amp=False).float().numpy()  # what `brats-seg predict` thresholds
    exact = torch.sigmoid(predict_slices(bundle.model, slices, amp=False, sigmoid=False)).numpy()
    assert out.dtype == np.float32 and out.shape == (len(slices), 2, 16, 16) and len(slices) not in (1, 2)
    assert np.ptp(exact) > 0.1  # probabilities that vary: a wrong weight or layer would show
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, fp16, rtol=0, atol=1e-3)
    meta = info["metadata"]
    assert meta["regions"] == ["wt", "tc"] and meta["threshold"] == 0.5
    assert {k: meta["slice"][k] for k in SLICE} == SLICE
    assert "z-score each modality over the case's brain voxels" in meta["preprocessing"]


def _model_folder(tmp: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(URI, dst_path=str(tmp), tracking_uri=tracking.tracking_uri()))


def test_the_registered_artifacts_hold_no_pickle_and_the_weights_are_the_model_file(store):
    model_file = _register(store)
    folder = _model_folder(store / "download")
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert files.keys() == {"MLmodel", "registered_model.py", "artifacts/unet.pt", "input_example.json",
                            "serving_input_example.json", "requirements.txt", "python_env.yaml", "conda.yaml",
                            "registered_model_meta"}
    assert not [n for n, p in files.items() if n != "artifacts/unet.pt" and p.read_bytes()[:1] == b"\x80"]  # pickle
    assert files["artifacts/unet.pt"].read_bytes() == model_file.read_bytes()  # the DVC-tracked file, as it is
    torch.load(files["artifacts/unet.pt"], weights_only=True)  # its one pickle stream is torch's weights-only kind
    assert files["registered_model.py"].read_text() == Path(registered_model.__file__).read_text()

    mlmodel = yaml.safe_load(files["MLmodel"].read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert set(mlmodel["flavors"]) == {"python_function"} and "python_model" not in pyfunc
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert pyfunc["artifacts"]["weights"]["path"] == "artifacts/unet.pt"
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 16, 16]}}]
    assert json.loads(mlmodel["signature"]["outputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 16, 16]}}]
    assert files["requirements.txt"].read_text().split() == [f"torch=={torch.__version__.split('+')[0]}",
                                                             f"mlflow=={mlflow.__version__}"]
    example = np.array(json.loads(files["input_example.json"].read_text()), dtype=np.float32)
    assert np.array_equal(example, synthetic_example(SLICE))  # z-scored noise, never a patient's slice


class _RunsCode:
    """Unpickling this writes ``target``: weights that would run code if loaded unsafely."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return exec, (f"open({str(self.target)!r}, 'w').write('ran')",)


def _crafted(path: Path, payload: Path, form: str) -> bytes:
    data = {"state_dict": _RunsCode(payload), "config": {}, "regions": ["wt"], "slice": SLICE}
    if form == "torch-zip":
        torch.save(data, path)
    else:
        path.write_bytes(pickle.dumps(data, protocol=2))
    return path.read_bytes()


@pytest.mark.parametrize("form", ["torch-zip", "raw-pickle"])
def test_a_crafted_pickle_is_refused_by_every_loader_and_never_runs(store, form, capsys):
    payload = store / "payload-ran"
    evil = _crafted(store / "evil.pt", payload, form)
    for load in (load_checkpoint, load_model, lambda p: resolve_model(str(p), "cpu")):
        with pytest.raises(UserError, match=f"evil.pt {CRAFTED}; use a model or checkpoint written by brats-seg"):
            load(store / "evil.pt")
    with pytest.raises(registered_model.RefusedWeights, match=CRAFTED):
        registered_model.read_weights(str(store / "evil.pt"))

    _register(store)
    (stored,) = Path("mlflow/artifacts").rglob("unet.pt")  # where the registered version keeps its weights
    stored.write_bytes(evil)
    message = f"the weights file of {URI} {CRAFTED}; use a model or checkpoint written by brats-seg."
    with pytest.raises(UserError) as caught:
        resolve_model(URI, "cpu")  # brats-seg's loader of registry versions: predict, promotion's re-scoring
    assert str(caught.value) == message
    capsys.readouterr()
    write_synthetic_cohort(store / "cases", 1)  # a case to segment: predict finds cases before loading the model
    with pytest.raises(SystemExit) as code:
        cli(["predict", str(store / "cases"), "--model", URI, "--device", "cpu"])
    assert code.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"
    with pytest.raises(ValueError, match=rf"unet.pt {CRAFTED}; load a model version registered") as caught:
        mlflow.pyfunc.load_model(URI)  # an application's loader, running the model's own copy of the code
    assert type(caught.value).__name__ == "RefusedWeights"
    assert not payload.exists()


def test_a_version_logged_as_a_pytorch_pickle_is_refused_unopened(store):
    with tracking.start_run("brats-seg") as run:
        pass
    with mlflow.start_run(run_id=run.run_id):
        info = mlflow.pytorch.log_model(UNet(UNetConfig(in_channels=2, base=4, depth=1)), name="model",
                                        serialization_format="pickle")
    mlflow.register_model(info.model_uri, NAME)
    tracking.set_alias(NAME, "challenger", "1")
    (weights,) = Path("mlflow/artifacts").rglob("model.pth")
    weights.write_bytes(pickle.dumps(_RunsCode(store / "payload-ran")))
    with pytest.raises(UserError, match=rf"^{URI} has no weights artifact: it was logged as a pickled model "
                                        r".* brats-seg never unpickles; register the model again \(dvc repro"):
        resolve_model(URI, "cpu")
    assert not (store / "payload-ran").exists()


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
@pytest.mark.parametrize("depth", [1, 2])
def test_the_registered_unet_is_the_projects_unet(norm, depth):
    """The copy in the model's own code takes the project U-Net's state dict strictly and computes the same."""
    config = UNetConfig(in_channels=3, out_channels=2, base=4, depth=depth, norm=norm)
    net = _unet(config, seed=depth)
    copy = registered_model.build_unet({"config": dataclasses.asdict(config), "state_dict": net.state_dict()})
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(copy(x), net(x))
    wrong = {"config": {**dataclasses.asdict(config), "base": 8}, "state_dict": net.state_dict()}
    with pytest.raises(registered_model.RefusedWeights, match="the weights do not fit their U-Net config"):
        registered_model.build_unet(wrong)


# --- the tracking UI ---------------------------------------------------------------------------------------

def test_experiments_are_tagged_as_model_development_when_created_or_opened(store):
    client = mlflow.MlflowClient(tracking.tracking_uri())
    new = tracking.use_experiment("made-here")
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-before")  # as experiments made before this tag was set
    assert "mlflow.experimentKind" not in client.get_experiment(older).tags
    with tracking.start_run("made-before"):
        pass
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracking.use_experiment("made-here") == new
