"""dvc.yaml knows every input: each stage's code deps are exactly the import closure of its stage module."""

from __future__ import annotations

import re

import pytest
import yaml

from brats_seg.orchestration.provenance import PROJECT_ROOT, code_manifest, import_closure

STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_the_stage_modules_import_closure(name):
    match = re.fullmatch(r"python -m (stages\.\w+)", STAGES[name]["cmd"])
    assert match, f"stage {name}: cmd {STAGES[name]['cmd']!r} is not `python -m stages.<name>`"
    closure = {p.relative_to(PROJECT_ROOT).as_posix() for p in import_closure(match[1])}
    deps = _code_deps(STAGES[name])
    missing, extra = sorted(closure - deps), sorted(deps - closure)
    fix = "run `python scripts/update_dvc_deps.py`"
    assert not missing, f"dvc.yaml stage {name} misses deps it imports: {', '.join(missing)}; {fix}"
    assert not extra, f"dvc.yaml stage {name} lists deps it never imports (needless reruns): {', '.join(extra)}; {fix}"


def test_the_update_script_writes_the_closure_and_keeps_the_rest():
    """scripts/update_dvc_deps.py: a dvc.yaml whose code deps are wrong comes back with the closure, its other
    deps, params, outs and comments untouched."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_dvc_deps", PROJECT_ROOT / "scripts" / "update_dvc_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    assert module.updated(text) == text
    broken = text.replace("      - src/brats_seg/errors.py\n", "", 1).replace("      - stages/train.py\n",
                                                                             "      - stages/train.py\n      - x.py\n")
    assert broken != text and module.updated(broken) == text


def test_the_closure_follows_function_level_relative_and_package_imports(tmp_path):
    """A hand-made package: every way of importing a project module is followed, nothing outside it is."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "",
        "pkg/top.py": "import json\nfrom pkg import a\n\ndef f():\n    from .sub import b\n",
        "pkg/a.py": "import numpy\n",
        "pkg/sub/__init__.py": "from pkg.sub.c import X\n",
        "pkg/sub/b.py": "from ..a import *\n",
        "pkg/sub/c.py": "X = 1\n",
        "pkg/unused.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    found = {p.relative_to(tmp_path).as_posix() for p in import_closure("pkg.top", roots=(tmp_path,))}
    assert found == set(files) - {"pkg/unused.py"}


def test_the_training_code_manifest_covers_what_training_runs():
    files = code_manifest(("brats_seg.training.loop",))
    assert {"src/brats_seg/training/losses.py", "src/brats_seg/training/augment.py", "src/brats_seg/data/labels.py",
            "src/brats_seg/models/unet.py", "src/brats_seg/io/checkpoint.py"} <= set(files)
    assert all(len(v) == 16 for v in files.values())
    assert "src/brats_seg/registry/tracking.py" not in files  # training itself never logs


def test_editing_any_training_module_changes_the_manifest_and_names_the_file(tmp_path):
    import shutil

    shutil.copytree(PROJECT_ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    roots = (tmp_path, tmp_path / "src")
    before = code_manifest(("brats_seg.training.loop",), roots, tmp_path)
    edited = ("src/brats_seg/training/losses.py", "src/brats_seg/training/augment.py", "src/brats_seg/data/labels.py")
    for rel in edited:
        with open(tmp_path / rel, "a") as fh:
            fh.write("\n# edited\n")
        after = code_manifest(("brats_seg.training.loop",), roots, tmp_path)
        assert [k for k in after if after[k] != before[k]] == [rel]
        before = after


def _sections_read(stage_module: str) -> set[str]:
    """The params sections a stage module loads (``load_section(Cls, params, "name")``)."""
    text = (PROJECT_ROOT / f"{stage_module.replace('.', '/')}.py").read_text()
    return set(re.findall(r"load_section\(\w+, \w+, \"(\w+)\"\)", text))


def derived_params(stage_module: str) -> set[str]:
    """What a stage's dvc.yaml ``params:`` must be, derived from the one runtime mark (config.runtime_field): every
    unmarked field of each section the stage reads; of ``base`` only the seed, where the stage's code uses it (its
    paths are deps and outs)."""
    from brats_seg.config import result_keys
    from brats_seg.sections import SECTIONS

    uses_seed = any("base.seed" in p.read_text() for p in import_closure(stage_module)
                    if p.name not in ("config.py", "base_params.py"))  # where base.seed is defined
    keys = {f"{name}.{key}" for name in _sections_read(stage_module) - {"base"}
            for key in result_keys(SECTIONS[name])}
    return keys | ({"base.seed"} if uses_seed else set())


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_params_are_the_fields_not_marked_runtime(name):
    module = re.fullmatch(r"python -m (stages\.\w+)", STAGES[name]["cmd"])[1]
    listed = set(STAGES[name].get("params", []))
    derived = derived_params(module)
    assert not derived - listed, f"dvc.yaml stage {name} misses params that shape its outputs: {derived - listed}"
    assert not listed - derived, f"dvc.yaml stage {name} lists runtime-only params (needless reruns): " \
                                 f"{listed - derived}"


def test_the_derivation_reads_the_stages_sections():
    """The derivation is not vacuous: the train stage reads base, train and evaluate (the lesion-wise config its
    post-processing maximises), and its derived params hold the settings known to shape a model and none of the
    runtime ones."""
    assert _sections_read("stages.train") == {"base", "train", "evaluate"}
    derived = derived_params("stages.train")
    assert {"base.seed", "train.epochs", "train.lr", "train.threads", "train.amp", "train.postprocess",
            "evaluate.lesionwise"} <= derived
    assert not {"train.resume", "train.memory_gb", "train.device", "evaluate.device"} & derived


def test_lineage_and_the_fingerprint_use_the_same_mark():
    from brats_seg.config import result_keys, runtime_keys
    from brats_seg.data.spec import SliceParams
    from brats_seg.registry.lineage import RUNTIME_PARAMS
    from brats_seg.training.loop import computation
    from brats_seg.training.params import TrainParams

    train_runtime = runtime_keys(TrainParams, "train")
    assert set(RUNTIME_PARAMS) == set(train_runtime) | set(runtime_keys(SliceParams, "slice"))
    resolved = computation(TrainParams(), "cpu")
    assert set(result_keys(TrainParams)) <= set(resolved)
    assert not {k.partition(".")[2] for k in train_runtime} - {"device"} & set(resolved)


def test_the_checkout_and_the_package_are_found_from_the_files_not_the_working_directory(tmp_path):
    """provenance.PROJECT_ROOT (whose code a stage hashes) and the Dask executors' code fingerprint (the whole
    brats_seg package) are found from their own files, wherever the process runs."""
    import os
    import subprocess
    import sys

    code = ("from brats_seg.orchestration.provenance import PROJECT_ROOT\n"
            "from brats_seg.orchestration import executors\n"
            "import hashlib, pathlib\n"
            "print(PROJECT_ROOT)\n"
            "root = PROJECT_ROOT / 'src' / 'brats_seg'\n"
            "d = hashlib.sha256()\n"
            "for p in sorted(root.rglob('*.py')):\n"
            "    d.update(f'{p.relative_to(root).as_posix()}\\0'.encode())\n"
            "    d.update(hashlib.sha256(p.read_bytes()).digest())\n"
            "print(d.hexdigest() == executors.code_fingerprint())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}).stdout.split()
    assert out == [str(PROJECT_ROOT), "True"]
