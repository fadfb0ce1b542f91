"""The registered model against a real sqlite MLflow store in a temporary directory.

It is an ONNX graph that carries no code: an application loads it with mlflow and onnxruntime alone (brats-seg
not importable, unpickling disabled), after checking its files as the README shows, and gets what the project's
own torch inference computes. Tampering with any file of a version (MLmodel, the graph, the weights, a file
added or removed) is refused by brats-seg and by the README's snippet before anything of it runs; the attack
itself is real (loading the tampered version unchecked runs the planted code). Also: a registration killed
half-way is adopted by the next one, and experiments are tagged as model development for MLflow's UI."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mlflow
from brats_seg.base_params import BaseParams
from brats_seg.cli import main as cli
from brats_seg.data.layouts import discover_cases
from brats_seg.data.preprocess import preprocess_case
from brats_seg.data.spec import SliceSpec
from brats_seg.data.synthetic import make_case
from brats_seg.errors import UserError
from brats_seg.inference.bundle import load_model, predict_slices, save_model
from brats_seg.io.checkpoint import load_checkpoint
from brats_seg.io.nifti import read_volume
from brats_seg.io.tables import write_json
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.registry import registered_model, tracking, versions
from brats_seg.registry.params import RegisterParams
from brats_seg.registry.resolve import resolve_model
from brats_seg.runners.register import register_stage, synthetic_example
from tests.support.cohorts import PROJECT_ROOT, write_synthetic_cohort

NAME = "brats-unet-test"
URI = f"models:/{NAME}@challenger"
SLICE = {"size": 16, "margin": 2, "modalities": ["flair", "t2"]}
REGIONS = ("wt", "tc")
CRAFTED = "was refused: it holds Python objects other than tensors and plain values, which could run code"


def _unet(config: ModelConfig, seed: int = 0, size: int = 16) -> UNet:
    """A U-Net with random weights, normalisation statistics moved off their defaults (a few training-mode
    passes) and a head scaled up, so that every parameter and buffer shapes probabilities that vary."""
    torch.manual_seed(seed)
    net = UNet(config)
    with torch.no_grad():
        for _ in range(3):
            net.train()(torch.randn(4, config.in_channels, size, size) * 2 + 0.5)
        net.head.weight.mul_(50)
    return net.eval()


def _register(store: Path) -> Path:
    """models/unet.pt written as the train stage writes it, registered by the register stage's own code under
    the default base paths with the default alias (challenger); returns the model file."""
    model_file = save_model(store / "models" / "unet.pt", _unet(ModelConfig(in_channels=2, out_channels=2, base=4,
                                                                           depth=1)),
                            REGIONS, SLICE, extra={"split_digest": "split-a", "fingerprint": "f" * 16})
    with tracking.start_run("brats-seg") as run:
        run.log_metrics({"test_wt_dice_mean": 0.8})
    write_json(store / "reports" / "train_run.json", {"run_id": run.run_id})
    write_json(store / "reports" / "eval.json", {"wt": {"dice_mean": 0.8, "hd95_median": 3.0}})
    register_stage(RegisterParams(model_name=NAME), BaseParams())
    return model_file


def _slices() -> np.ndarray:
    """A synthetic case preprocessed as the slice stage does: float32 ``[Z, 2, 16, 16]``."""
    case = make_case(1, 0, (48, 48, 24))
    volumes = np.stack([case.images[m] for m in SLICE["modalities"]]).astype(np.float32)
    return preprocess_case(volumes, case.affine, SLICE["size"], SLICE["margin"]).images.astype(np.float32)


def readme_snippet() -> str:
    """The README's Python block for applications (the one that checks the files, then loads the version)."""
    blocks = re.findall(r"```python\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if "mlflow.pyfunc.load_model" in b]
    assert len(found) == 1, "README.md must show one Python snippet that loads the registered model"
    return found[0]


# The README's snippet run by a python that cannot import brats-seg and cannot unpickle: it sees `slices`, its
# `probs` and `meta` are saved. The registry name is the test's.
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

import numpy as np

slices = np.load(sys.argv[1])
exec(compile(open(sys.argv[2]).read(), "README.md", "exec"))
np.save(sys.argv[3], probs)
with open(sys.argv[4], "w") as fh:
    json.dump({"metadata": meta, "brats_modules": [m for m in sys.modules if "brats" in m]}, fh)
"""


def _run_app(store: Path, slices: np.ndarray) -> subprocess.CompletedProcess:
    """The README's snippet in a fresh interpreter: ``-S`` skips the site-packages .pth files (the editable
    install among them), so only the venv's installed packages are importable."""
    app = store / "app"
    app.mkdir(exist_ok=True)
    (app / "load.py").write_text(APP)
    (app / "snippet.py").write_text(readme_snippet().replace('"brats-unet", "champion"', f'{NAME!r}, "challenger"'))
    np.save(app / "slices.npy", slices)
    # run from the project folder with no MLFLOW_TRACKING_URI: the snippet finds the project's own store
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app), "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    (app / "out.npy").unlink(missing_ok=True)
    return subprocess.run([sys.executable, "-S", str(app / "load.py"), str(app / "slices.npy"), str(app / "snippet.py"),
                           str(app / "out.npy"), str(app / "info.json")], cwd=store, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_readme_snippet_loads_it_without_brats_seg_or_unpickling_and_predicts_what_torch_predicts(store):
    model_file = _register(store)
    slices = _slices()
    proc = _run_app(store, slices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, info = np.load(store / "app" / "out.npy"), json.loads((store / "app" / "info.json").read_text())
    assert info["brats_modules"] == []
    bundle = load_model(model_file)
    exact = torch.sigmoid(predict_slices(bundle.model, slices, amp=False, sigmoid=False)).numpy()
    assert out.dtype == np.float32 and out.shape == (len(slices), 2, 16, 16) and len(slices) not in (1, 2)
    assert np.ptp(exact) > 0.1  # probabilities that vary: a wrong weight or layer would show
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-4)
    meta = info["metadata"]
    assert meta["regions"] == ["wt", "tc"] and meta["threshold"] == {"wt": 0.5, "tc": 0.5}
    assert meta["model"] == {"in_channels": 2, "out_channels": 2, "base": 4, "depth": 1, "norm": "batch",
                             "architecture": "unet", "members": 1}
    assert meta["channels"] == ["flair", "t2"]  # one per input channel (no 2.5D context)
    assert meta["label_convention"] == "brats2020" and set(meta["postprocess"]) == {"min_component_mm3", "et_min_mm3"}
    assert {k: meta["slice"][k] for k in SLICE} == SLICE
    assert "z-score each modality over the case's brain voxels" in meta["preprocessing"]


def _stored_files() -> Path:
    """The folder of the artifact store that holds the registered version's files."""
    (graph,) = Path("mlflow/artifacts").rglob("model.onnx")
    return graph.parent


def test_the_version_holds_no_code_and_the_registry_holds_the_sha256_of_each_of_its_files(store):
    model_file = _register(store)
    folder = _stored_files()
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert files.keys() == {"MLmodel", "model.onnx", "extra_files/weights.pt", "input_example.json",
                            "serving_input_example.json", "requirements.txt", "python_env.yaml", "conda.yaml"}
    assert not [p for p in files if p.endswith(".py")]
    assert not [name for name, path in files.items() if _is_pickle(path.read_bytes())]  # of any protocol
    torch.load(files["extra_files/weights.pt"], weights_only=True)  # its one pickle is torch's weights-only kind
    assert files["extra_files/weights.pt"].read_bytes() == model_file.read_bytes()  # the DVC-tracked file as it is
    mlmodel = yaml.safe_load(files["MLmodel"].read_text())
    assert set(mlmodel["flavors"]) == {"onnx", "python_function"}
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.onnx"
    assert "code" not in mlmodel["flavors"]["python_function"] and mlmodel["flavors"]["onnx"]["code"] is None
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 16, 16]}}]
    example = np.array(json.loads(files["input_example.json"].read_text()), dtype=np.float32)
    assert np.array_equal(example, synthetic_example(SliceSpec.from_record(SLICE)))  # z-scored noise, no patient's

    tags = versions.model_version(NAME, alias="challenger")["tags"]
    import hashlib

    assert {k: v for k, v in tags.items() if k.startswith("sha256/")} == {
        f"sha256/{name}": hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}
    assert tags["brats_seg.registration"] == "complete"
    assert tags["model"] == "unet base 4 depth 1"  # what `brats-seg versions` names the network by


def _plant_loader(folder: Path, marker: Path) -> None:
    """Make the stored MLmodel load the version through Python code planted beside it (what an attacker with
    write access to the artifact store would do): running it writes ``marker``."""
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"].update(loader_module="planted", code="code")
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (folder / "code").mkdir()
    (folder / "code" / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                                "def _load_pyfunc(path, model_config=None):\n    return None\n")


def _other_graph(folder: Path, marker: Path) -> None:
    other = _unet(ModelConfig(in_channels=2, out_channels=2, base=4, depth=1), seed=7)
    (folder / "model.onnx").write_bytes(registered_model.export_onnx(other, _slices()[:2]))


def _crafted_weights(folder: Path, marker: Path) -> None:
    (folder / "extra_files" / "weights.pt").write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))


def _added_file(folder: Path, marker: Path) -> None:
    (folder / "code").mkdir()
    (folder / "code" / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


def _removed_file(folder: Path, marker: Path) -> None:
    (folder / "input_example.json").unlink()


@pytest.mark.parametrize(("tamper", "clause"), [
    (_plant_loader, "its file MLmodel is not the registered one"),
    (_other_graph, "its file model.onnx is not the registered one"),
    (_crafted_weights, "its file extra_files/weights.pt is not the registered one"),
    (_added_file, "it holds a file code/planted.py that was not registered"),
    (_removed_file, "its file input_example.json is missing"),
], ids=["MLmodel-runs-planted-code", "another-graph", "crafted-weights", "file-added", "file-removed"])
def test_tampering_with_any_file_is_refused_by_brats_seg_and_the_readme_snippet(store, capsys, tamper, clause):
    _register(store)
    marker = store / "payload-ran"
    tamper(_stored_files(), marker)
    message = (f"{URI} (version 1) was refused: {clause}")
    with pytest.raises(UserError) as caught:
        resolve_model(URI, "cpu")  # brats-seg's loader of registry versions: predict, the promotion's re-score
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith("nothing of it was loaded; restore the version's files from a backup of the "
                                      "artifact store, or register and promote another model (dvc repro register, "
                                      "brats-seg promote).")
    write_synthetic_cohort(store / "cases", 1)  # a case to segment: predict finds cases before loading the model
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        cli(["predict", str(store / "cases"), "--model", URI, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    proc = _run_app(store, _slices())
    assert proc.returncode != 0 and "its files are not the registered ones; not loaded" in proc.stderr
    assert not (store / "app" / "out.npy").exists() and not marker.exists()


def test_the_planted_loader_is_a_real_attack_when_nothing_is_checked(store):
    """The control for the test above: loading the tampered version without the check runs the planted code."""
    _register(store)
    marker = store / "payload-ran"
    _plant_loader(_stored_files(), marker)
    try:
        mlflow.pyfunc.load_model(URI)
    except Exception:  # noqa: BLE001 - the planted loader returns no model; what matters is that it ran
        pass
    assert marker.read_text() == "ran"


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
    else:  # a bare pickle stream of protocol N: protocols 0 and 1 do not start with 0x80
        path.write_bytes(pickle.dumps(data, protocol=int(form.rsplit("-", 1)[1])))
    return path.read_bytes()


def _is_pickle(data: bytes) -> bool:
    """Whether ``data`` is one whole pickle stream (of any protocol): its opcodes parse up to a STOP at its end."""
    import pickletools

    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - not a pickle
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and ops[-1][2] == len(data) - 1


@pytest.mark.parametrize("form", ["torch-zip", *[f"raw-pickle-{p}" for p in range(pickle.HIGHEST_PROTOCOL + 1)]])
def test_crafted_weights_are_refused_by_every_loader_and_never_run(store, form):
    """Every pickle protocol is refused by every loader; even weights whose digests a registry writer recorded are
    read with weights_only and refused."""
    payload = store / "payload-ran"
    evil = _crafted(store / "evil.pt", payload, form)
    assert form == "torch-zip" or _is_pickle(evil)
    for load in (load_checkpoint, load_model, lambda p: resolve_model(str(p), "cpu")):
        with pytest.raises(UserError, match=f"evil.pt {CRAFTED}; use a model or checkpoint written by brats-seg"):
            load(store / "evil.pt")
    if form not in ("torch-zip", "raw-pickle-0"):
        return  # the registry's loader reads the weights with the same function
    _register(store)
    weights = _stored_files() / "extra_files" / "weights.pt"
    weights.write_bytes(evil)
    versions.set_version_tags(NAME, "1", {"sha256/extra_files/weights.pt": versions.file_sha256(weights)})
    with pytest.raises(UserError) as caught:
        resolve_model(URI, "cpu")
    assert str(caught.value) == f"the weights file of {URI} {CRAFTED}; use a model or checkpoint written by brats-seg."
    assert not payload.exists()


def test_a_version_without_recorded_digests_is_refused_unopened(store):
    with tracking.start_run("brats-seg") as run:
        pass
    with mlflow.start_run(run_id=run.run_id):
        info = mlflow.pytorch.log_model(UNet(ModelConfig(in_channels=2, base=4, depth=1)), name="model",
                                        serialization_format="pickle")
    mlflow.register_model(info.model_uri, NAME)
    versions.set_alias(NAME, "challenger", "1")
    (weights,) = Path("mlflow/artifacts").rglob("model.pth")
    weights.write_bytes(pickle.dumps(_RunsCode(store / "payload-ran")))
    with pytest.raises(UserError, match=rf"^{URI} \(version 1\) was registered without the SHA-256 of its files "
                                        r".* register the model again \(dvc repro register\)"):
        resolve_model(URI, "cpu")
    assert not (store / "payload-ran").exists()


def test_a_registration_killed_before_its_alias_is_adopted_not_registered_twice(store):
    _register(store)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    # the state a kill -9 between creating the version and setting its alias leaves behind
    client.delete_registered_model_alias(NAME, "challenger")
    client.delete_model_version_tag(NAME, "1", "brats_seg.registration")
    register_stage(RegisterParams(model_name=NAME), BaseParams())
    found = versions.model_versions(NAME)
    assert [v["version"] for v in found] == ["1"] and found[0]["aliases"] == ["challenger"]
    assert found[0]["tags"]["brats_seg.registration"] == "complete"
    assert resolve_model(URI, "cpu").regions == REGIONS
    # a complete registration is never adopted: the same run registered again is a new version
    register_stage(RegisterParams(model_name=NAME), BaseParams())
    assert [v["version"] for v in versions.model_versions(NAME)] == ["1", "2"]


def test_registering_against_a_store_without_the_training_run_is_one_sentence(store, monkeypatch):
    """A team moves to a new tracking server after training locally: register there is one sentence and the fix."""
    _register(store)
    run_id = json.loads((store / "reports" / "train_run.json").read_text())["run_id"]
    (store / "team").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'team' / 'mlflow.db'}")
    with pytest.raises(UserError) as caught:
        register_stage(RegisterParams(model_name=NAME), BaseParams())
    assert str(caught.value) == (f"the tracking store at sqlite:///{store / 'team' / 'mlflow.db'} has no run {run_id}: "
                                 f"the model was trained against another store; train it again against this one (dvc "
                                 f"repro -f train), or set MLFLOW_TRACKING_URI to the store that holds the run.")
    assert versions.model_versions() == []  # nothing half-registered there


def _equal_outputs(net: UNet, slices: np.ndarray) -> None:
    graph = registered_model.export_onnx(net, slices[:2])
    with torch.no_grad():
        exact = torch.sigmoid(net(torch.from_numpy(slices))).numpy()
    out = registered_model.run_onnx(graph, slices)
    assert np.ptp(exact) > 0.1 and out.shape == exact.shape
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
@pytest.mark.parametrize("depth", [1, 2])
def test_the_onnx_graph_computes_what_the_torch_unet_computes(norm, depth):
    config = ModelConfig(in_channels=2, out_channels=3, base=4, depth=depth, norm=norm)
    net = _unet(config, seed=depth)
    _equal_outputs(net, _slices())
    assert not net.training  # exporting leaves the model in eval mode as it was


def test_the_onnx_graph_computes_what_torch_computes_on_real_slices(real_data):
    """A seed-sized U-Net on the brain slices of a real BraTS case, preprocessed as the slice stage does."""
    case = discover_cases(real_data / "BraTS2021_00006")[0]
    volumes = [read_volume(case.images[m][0]) for m in ("flair", "t1", "t1ce", "t2")]
    pre = preprocess_case(np.stack([v[0] for v in volumes]).astype(np.float32), volumes[0][1].affine, 128, 8)
    slices = pre.images[pre.brain_pixels > 0][::10].astype(np.float32)
    _equal_outputs(_unet(ModelConfig(in_channels=4, out_channels=3, base=32, depth=4), size=128), slices)


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


def test_the_model_tag_names_an_ensemble_and_a_context():
    from brats_seg.inference.bundle import ModelBundle
    from brats_seg.models.factory import build
    from brats_seg.runners.register import model_tag

    net = build(ModelConfig(in_channels=6, out_channels=3, base=4, depth=1, architecture="resunet", members=3))
    bundle = ModelBundle(net, ("wt", "tc", "et"), {**SLICE, "context": 1})
    assert model_tag(bundle) == "resunet base 4 depth 1, 3 members, context 1"
