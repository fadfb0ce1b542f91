from __future__ import annotations

import copy
import dataclasses
import os
from typing import Literal

import pytest

from brats_seg.base_params import BaseParams
from brats_seg.config import check_cross_section, load_section, read_params
from brats_seg.data.sources import DownloadParams
from brats_seg.data.spec import SliceParams
from brats_seg.errors import ConfigError
from brats_seg.sections import SECTIONS, check_params
from brats_seg.training.params import TrainParams
from tests.support.cohorts import PROJECT_ROOT


@dataclasses.dataclass(frozen=True)
class Inner:
    n: int = 1


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5
    sizes: tuple[int, ...] = (1,)
    inner: Inner = Inner()
    maybe: str | None = None
    size: float | Literal["auto"] = "auto"


def test_project_params_load_into_every_section():
    params = read_params(PROJECT_ROOT / "params.yaml")
    base = load_section(BaseParams, params, "base")
    assert base.raw_dir == "data/raw"
    download = load_section(DownloadParams, params, "download")
    assert download.synthetic.shape == (240, 240, 155)
    assert load_section(SliceParams, params, "slice").modalities == ("flair", "t1", "t1ce", "t2")


def test_values_are_coerced_and_frozen():
    cfg = load_section(Outer, {"o": {"name": "x", "rate": 1, "sizes": [2, 3], "inner": {"n": 4}}}, "o")
    assert cfg == Outer(name="x", rate=1.0, sizes=(2, 3), inner=Inner(4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(("section", "message"), [
    ({"name": "x", "sise": 1}, "params.yaml: o.sise is not a known key"),
    ({"name": 3}, "params.yaml: o.name must be a string, got 3"),
    ({"name": "x", "rate": "fast"}, "params.yaml: o.rate must be a number, got 'fast'"),
    ({"name": "x", "sizes": [1, "2"]}, "params.yaml: o.sizes[1] must be an integer, got '2'"),
    ({"name": "x", "inner": {"n": True}}, "params.yaml: o.inner.n must be an integer, got True"),
    ({"name": "x", "inner": {"m": 1}}, "params.yaml: o.inner.m is not a known key"),
    ({"name": "x", "mode": "c"}, "params.yaml: o.mode must be one of 'a', 'b', got 'c'"),
    ({"name": "x", "size": "big"}, "params.yaml: o.size must be a number or 'auto', got 'big'"),
    ({}, "params.yaml: o.name is missing"),
])
def test_bad_values_name_the_key(section, message):
    with pytest.raises(ConfigError) as err:
        load_section(Outer, {"o": section}, "o")
    assert str(err.value).startswith(message)


def test_missing_section_and_file_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="has no 'o' section"):
        load_section(Outer, {}, "o")
    with pytest.raises(ConfigError, match="does not exist"):
        read_params(tmp_path / "nope.yaml")


def test_slice_params_check_their_meaning():
    with pytest.raises(ConfigError, match="slice.modalities"):
        load_section(SliceParams, {"slice": {"modalities": ["flair", "dwi"]}}, "slice")
    with pytest.raises(ConfigError, match="slice.split"):
        load_section(SliceParams, {"slice": {"split": [0.5, 0.2, 0.2]}}, "slice")


def test_params_set_keeps_comments_and_refuses_unknown_keys(tmp_path):
    from brats_seg.params_file import set_params

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 20   # the seed's default\n  lr: 1.0e-4\n")
    changed = set_params(path, ["train.epochs=5", "train.lr=0.001"], check_params)
    assert changed == {"train.epochs": 5, "train.lr": 0.001}
    text = path.read_text()
    assert "# the seed's default" in text and read_params(path)["train"] == {"epochs": 5, "lr": 0.001}
    with pytest.raises(ConfigError, match="train.epoch is not a known key"):
        set_params(path, ["train.epoch=3"], check_params)
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        set_params(path, ["train.epochs"], check_params)
    with pytest.raises(ConfigError, match="does not exist"):
        set_params(tmp_path / "missing.yaml", ["train.epochs=1"], check_params)


def test_numbers_without_a_dot_are_the_numbers_dvc_reads_in_the_file_and_in_params_set(tmp_path):
    """``lr: 3e-4`` is 0.0003 to DVC (YAML 1.2: what `dvc exp run -S train.lr=3e-4` and `dvc params diff` see) and a
    string to plain PyYAML (YAML 1.1); the stages and `brats-seg params set` read it as DVC does. Integers stay
    integers, and a quoted number stays a string (so it is refused as one)."""
    from dvc.utils.serialize import parse_yaml

    from brats_seg.params_file import set_params

    text = "train:\n  lr: 3e-4\n  bce_weight: 1e0\n  epochs: 5\n  bias_field: .5\n"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert read_params(path) == parse_yaml(text, str(path)) == {
        "train": {"lr": 0.0003, "bce_weight": 1.0, "epochs": 5, "bias_field": 0.5}}
    assert isinstance(read_params(path)["train"]["epochs"], int)
    changed = set_params(path, ["train.lr=1e-3", "train.bias_field=2.5E-1"], check_params)
    assert changed == {"train.lr": 0.001, "train.bias_field": 0.25}
    assert read_params(path)["train"]["lr"] == 0.001 and "lr: 0.001" in path.read_text()  # written as a number
    path.write_text('train:\n  lr: "3e-4"\n')
    with pytest.raises(ConfigError, match="train.lr must be a number, got '3e-4'"):
        load_section(TrainParams, read_params(path), "train")


def test_the_accuracy_benchmarks_levers_are_read_as_dvc_reads_them(tmp_path):
    """`benchmarks/real_accuracy.py --set train.lr=3e-4` puts the number 0.0003 into every fold's params, which the
    stages accept (a string there would stop each fold's train stage)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_accuracy", PROJECT_ROOT / "benchmarks" / "real_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(size=96, folds=4, epochs=20, base=16, depth=3, batch=32, lr=1e-4, device="cpu",
                              threads=1, set=["train.lr=3e-4", "train.modality_dropout=25e-2"])
    params = bench.fold_params(args, tmp_path, seed=0, fold=1)
    assert (params["train"]["lr"], params["train"]["modality_dropout"]) == (0.0003, 0.25)
    check_params(params)


def test_a_missing_report_says_which_stage_to_run(tmp_path):
    from brats_seg.errors import DataError
    from brats_seg.io.tables import read_json

    with pytest.raises(DataError, match="eval.json does not exist; run the pipeline stage that writes it"):
        read_json(tmp_path / "eval.json")


def _project_params() -> dict:
    return read_params(PROJECT_ROOT / "params.yaml")


def _with(params: dict, key: str, value: object) -> dict:
    """A deep copy of ``params`` with dotted ``key`` set to ``value``."""
    out = copy.deepcopy(params)
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.epochs", -1, "train.epochs must be an integer >= 1, got -1."),
    ("train.epochs", 0, "train.epochs must be an integer >= 1, got 0."),
    ("train.depth", 0, "train.depth must be an integer >= 1, got 0."),
    ("train.lr", -0.1, "train.lr must be a number > 0, got -0.1."),
    ("train.lr", 0, "train.lr must be a number > 0, got 0.0."),
    ("train.lr", float("nan"), "train.lr must be a number > 0, got nan."),
    ("train.batch_size", 0, "train.batch_size must be an integer >= 1, got 0."),
    ("train.base", 0, "train.base must be an integer >= 1, got 0."),
    ("train.bce_weight", -1, "train.bce_weight must be a number >= 0, got -1.0."),
    ("train.bias_field", -0.5, "train.bias_field must be a number from 0 (off) to 5 (z-score units), got -0.5."),
    ("train.modality_dropout", 1, "train.modality_dropout must be a probability from 0 (off) to below 1, got 1."),
    ("train.threads", -2, "train.threads must be an integer >= 0, got -2."),
    ("train.norm", "group", None),  # base 32 suits group norm
    ("base.seed", -1, "base.seed must be an integer >= 0, got -1."),
    ("base.model", "", "base.model must be a non-empty path or name, got ''."),
    ("validate.max_bad_fraction", 1.5, "validate.max_bad_fraction must be a number from 0 to 1, got 1.5."),
    ("validate.min_brain_voxels", -1, "validate.min_brain_voxels must be an integer >= 0, got -1."),
    ("validate.workers", -1, "validate.workers must be an integer >= 0, got -1."),
    ("promote.min_dice", 1.2, "promote.min_dice must be a number from 0 to 1, got 1.2."),
    ("promote.min_improvement", -0.1, "promote.min_improvement must be a number from 0 to 1, got -0.1."),
    ("download.workers", -1, "download.workers must be an integer >= 0, got -1."),
    ("download.synthetic.n_cases", 0, "download.synthetic.n_cases must be an integer >= 1, got 0."),
    ("download.synthetic.shape", [240, 4, 155], "download.synthetic.shape must be three integers >= 8, "
                                                "got [240, 4, 155]."),
    ("download.synthetic.tumour_free_fraction", 2, "must be a number from 0 to 1, got 2.0."),
    ("download.url.retries", -1, "download.url.retries must be an integer >= 0, got -1."),
    ("download.url.timeout_s", 0, "download.url.timeout_s must be a number > 0, got 0.0."),
    ("download.url.url", "ftp://example.org/x.tar", "download.url.url must be an http:// or https:// URL"),
    ("download.url.md5", "abc", "download.url.md5 must be 32 hexadecimal digits, or null to skip the check"),
    ("download.url.md5", None, None),
    ("download.kaggle.dataset", "no-slash", "download.kaggle.dataset must be OWNER/NAME"),
    ("download.kaggle.timeout_s", -5, "download.kaggle.timeout_s must be a number > 0, got -5.0."),
    ("slice.size", 4, "slice.size must be an integer from 8 to 1024 (BraTS slices are 240 x 240 voxels"),
    ("slice.size", 1048576, "slice.size must be an integer from 8 to 1024"),
    ("train.epochs", 1000000000, "train.epochs must be an integer from 1 to 100000, got 1000000000."),
    ("train.epochs", 100000, None),
    ("train.batch_size", 10**6, "train.batch_size must be an integer from 1 to 65536, got 1000000."),
    ("train.base", 100000, "train.base must be an integer from 1 to 4096, got 100000."),
    ("train.base", 4096, "to train, more than this host's memory"),  # within the bound, not within memory
    ("download.synthetic.shape", [100000] * 3, "download.synthetic.shape must be a volume whose case fits a "
                                               "quarter of this host's memory"),
    ("base.model", "README.md", "base.model must be a path the pipeline owns, not README.md"),
    ("base.model", "models/unet.onnx", "base.model must be a .pt file"),
    ("base.raw_dir", "/", "base.raw_dir must be a relative path inside the repository"),
    ("base.raw_dir", "/home/user/scans", "base.raw_dir must be a relative path inside the repository"),
    ("base.raw_dir", "~/scans", "base.raw_dir must be a relative path inside the repository"),
    ("base.raw_dir", "../outside", "base.raw_dir must be a relative path inside the repository"),
    ("base.raw_dir", ".", "base.raw_dir must be a relative path inside the repository"),
    ("base.slices_dir", "src/brats_seg", "base.slices_dir must be a path the pipeline owns, not src"),
    ("base.raw_dir", "./data/raw2", None),
    ("base.cache_dir", "/", "base.cache_dir must be a folder of its own"),
    ("base.cache_dir", "/scratch/brats-cache", None),  # untracked: a scratch disk is fine
    ("slice.margin", -1, "slice.margin must be an integer >= 0, got -1."),
    ("slice.keep_empty_fraction", -0.5, "slice.keep_empty_fraction must be a number from 0 to 1, got -0.5."),
    ("slice.split", [0.0, 0.5, 0.5], "slice.split must be three fractions (train, val, test)"),
    ("slice.split", [1.2, -0.1, -0.1], "slice.split must be three fractions"),
    ("slice.modalities", ["flair", "flair"], "slice.modalities must name each of some of"),
    ("schedule.cron", "every monday", "schedule.cron must be a cron expression of five fields"),
    ("schedule.timezone", "Mars/Olympus", "schedule.timezone must be an IANA time zone"),
])
def test_every_value_is_checked_against_its_meaning(key, value, message):
    params = _with(_project_params(), key, value)
    if message is None:
        check_params(params)
        return
    with pytest.raises(ConfigError) as err:
        check_params(params)
    assert str(err.value).startswith(f"params.yaml: {key}") and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("  lr: .nan", "train.lr must be a number > 0, got nan."),
    ("  lr: .inf", "train.lr must be a number > 0, got inf."),
    ("  epochs: .inf", "train.epochs must be an integer, got inf."),
    ("  1: 2", "train.1 is not a known key"),
    ("  lr: 2024-01-01", "train.lr must be a number, got '2024-01-01'."),
    ("  epochs: 2024-01-01 10:00:00", "train.epochs must be an integer, got '2024-01-01 10:00:00'."),
])
def test_what_yaml_reads_as_nan_inf_int_keys_and_dates_gets_one_sentence(tmp_path, text, message):
    """YAML's own types (``.nan``, ``.inf``, integer keys, dates) written in the file, read as the stages read it."""
    lines = (PROJECT_ROOT / "params.yaml").read_text().splitlines()
    start = lines.index("train:")
    # last in the section: YAML keeps the last of a repeated key, as it would keep a user's edit further down
    at = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#")))
    path = tmp_path / "params.yaml"
    path.write_text("\n".join([*lines[:at], text, *lines[at:]]) + "\n")
    with pytest.raises(ConfigError) as err:
        check_params(read_params(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_project_params_and_the_section_registry_agree():
    params = _project_params()
    check_params(params)
    assert set(SECTIONS) == set(params)  # a new section gets a dataclass that checks it


@pytest.mark.parametrize(("size", "depth", "ok"), [(60, 3, False), (64, 3, True), (128, 4, True), (24, 2, True),
                                                   (24, 4, False), (8, 3, True), (8, 4, False)])
def test_slice_size_must_be_divisible_by_2_to_the_depth(size, depth, ok):
    params = _with(_with(_project_params(), "slice.size", size), "train.depth", depth)
    if ok:
        load_section(SliceParams, params, "slice")
        return
    for section, cls in (("slice", SliceParams), ("train", TrainParams)):  # both stages stop before working
        with pytest.raises(ConfigError, match=rf"slice.size must be a multiple of 2\*\*train.depth = {2**depth} "
                                              rf"\(train.depth is {depth}\), got {size}; use a multiple of"):
            load_section(cls, params, section)


def test_the_cross_section_rule_leaves_a_bad_value_to_its_own_section():
    params = _with(_project_params(), "train.depth", "deep")
    assert load_section(SliceParams, params, "slice").size == params["slice"]["size"]  # train reports train.depth
    with pytest.raises(ConfigError, match="train.depth must be an integer, got 'deep'"):
        load_section(TrainParams, params, "train")

def test_a_value_params_yaml_leaves_out_is_checked_at_its_default_by_the_whole_document_check():
    """A stage checks the rule on the values its params.yaml writes (its own import closure holds its own sections
    only); the whole-document check (`brats-seg params set`, the flow) knows every section's defaults, and training
    checks the slices it reads (tests/test_train.py)."""
    params = {"slice": {"size": 60}, "train": {}}
    check_cross_section(params)  # train.depth absent: nothing to compare here
    assert load_section(SliceParams, params, "slice").size == 60
    with pytest.raises(ConfigError, match="= 16 .train.depth is 4., got 60"):  # the default depth, 4
        check_params(params)
    with pytest.raises(ConfigError, match="= 8 .train.depth is 3., got 60"):  # written: the stage stops too
        load_section(SliceParams, {"slice": {"size": 60}, "train": {"depth": 3}}, "slice")


def test_messages_name_the_file_they_came_from():
    with pytest.raises(ConfigError, match=r"^exp\.yaml: train\.epochs must be an integer >= 1, got 0\.$"):
        load_section(TrainParams, {"train": {"epochs": 0}}, "train", source="exp.yaml")
    with pytest.raises(ConfigError, match=r"^exp\.yaml: download\.synthetic\.n_cases must be"):
        load_section(DownloadParams, {"download": {"synthetic": {"n_cases": 0}}}, "download", source="exp.yaml")


@pytest.mark.parametrize(("assignments", "message"), [
    (["train.epochs=abc"], "train.epochs must be an integer, got 'abc'."),
    (["train.epochs=-1"], "train.epochs must be an integer >= 1, got -1."),
    (["slice.size=60", "train.depth=3"], "slice.size must be a multiple of 2**train.depth = 8"),
    (["slice.split=[0.7"], "slice.split=[0.7 does not hold a YAML value"),
    (["train=5"], "train must be a mapping of keys, got 5."),
    (["=5"], "'=5' is not KEY=VALUE"),
])
def test_params_set_refuses_bad_values_before_writing(tmp_path, assignments, message):
    from brats_seg.params_file import set_params

    path = tmp_path / "params.yaml"
    path.write_bytes((PROJECT_ROOT / "params.yaml").read_bytes())
    before = path.read_bytes()
    with pytest.raises(ConfigError) as err:
        set_params(path, assignments, check_params)
    assert message in str(err.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_prefect_yaml_schedules_the_work_pool_deployment_as_params_yaml_does():
    """The schedule lives in params.yaml (flows/serve.py loads it as ScheduleParams); prefect.yaml, which Prefect
    reads without running our code, holds a copy that must not drift."""
    import yaml

    from brats_seg.base_params import ScheduleParams
    from brats_seg.config import load_section, read_params
    from brats_seg.orchestration.provenance import PROJECT_ROOT

    schedule = load_section(ScheduleParams, read_params(PROJECT_ROOT / "params.yaml"), "schedule")
    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    scheduled = [d for d in deployments if d.get("schedules")]
    assert scheduled, "prefect.yaml schedules no deployment"
    for deployment in scheduled:
        assert deployment["schedules"] == [{"cron": schedule.cron, "timezone": schedule.timezone}], (
            f"prefect.yaml deployment {deployment['name']} is scheduled otherwise than params.yaml `schedule`")


def test_every_section_is_checked_without_importing_torch_mlflow_or_prefect():
    """`brats-seg params set` and every stage's params check import no heavy library: each section's dataclass
    lives in a module of its own that needs none (pandas, 0.4 s, is for the frames the stages make; scipy's image
    and optimisation modules, 0.35 s, for computing the metrics)."""
    import subprocess
    import sys

    heavy = ("torch", "mlflow", "prefect", "great_expectations", "pandas", "scipy.ndimage", "scipy.optimize")
    code = f"import sys; from brats_seg.sections import check_params; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")})
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(("stage", "key", "value"), [("train", "train.lr", -1), ("evaluate", "evaluate.tta", "maybe"),
                                                   ("register", "register.alias", "champion"),
                                                   ("report", "promote.min_dice", 2)])
def test_a_stage_says_a_bad_value_before_it_loads_torch_or_mlflow(tmp_path, stage, key, value):
    """`dvc exp run -S train.lr=-1` is told in a second, not after torch and MLflow have loaded (about three)."""
    import subprocess
    import sys

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with(_project_params(), key, value)))
    code = (f"import sys\nfrom stages.{stage} import main\ntry:\n    main([])\nexcept SystemExit as exc:\n"
            f"    print(exc.code, sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{PROJECT_ROOT}"})
    assert f"params.yaml: {key}" in out.stderr, out.stderr[-2000:]
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr[-2000:]


def test_params_set_past_a_bad_value_already_in_the_file_says_how(tmp_path):
    from brats_seg.params_file import set_params

    path = tmp_path / "params.yaml"
    path.write_text((PROJECT_ROOT / "params.yaml").read_text().replace("  select: dice ", "  select: best "))
    with pytest.raises(ConfigError) as err:
        set_params(path, ["train.threshold=auto"], check_params)
    assert str(err.value).endswith("got 'best'; that value is already in " + str(path) + ": set it too "
                                   "(train.select=...) or restore the file (git checkout -- params.yaml).")
    with pytest.raises(ConfigError) as err:  # the value being set is the bad one: its own sentence, no more
        set_params(path, ["train.select=worst"], check_params)
    assert str(err.value).endswith("got 'worst'.")
    changed = set_params(path, ["train.select=dice", "train.threshold=auto"], check_params)
    assert changed == {"train.select": "dice", "train.threshold": "auto"}
