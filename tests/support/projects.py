"""Scratch DVC projects: a copy of this checkout's pipeline in a temporary git repository, on tiny params."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support.cohorts import COHORT_SEED, PROJECT_ROOT, TINY_SHAPE
from tests.support.once import built_once

TINY_PARAMS = {
    "base": {"seed": COHORT_SEED},  # the five cases fill train, val and test (see COHORT_SEED)
    "download": {"workers": 1, "synthetic": {"n_cases": 5, "shape": list(TINY_SHAPE), "tumour_free_fraction": 0.2}},
    "validate": {"workers": 1},
    "slice": {"size": 32, "workers": 1},
    "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "base": 8, "depth": 2, "threads": 1},
}


def merge_params(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s values, section by section (neither is changed)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_params(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_cmd(args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a command with the project's virtualenv first on PATH (as `make` does). ``env`` adds variables (applied
    last: ``{"MLFLOW_TRACKING_URI": url}`` points the command at a tracking server instead of the local store)."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full_env.pop("MLFLOW_TRACKING_URI", None)  # the project's own local store, unless `env` names a server
    if (Path(cwd) / "src" / "brats_seg").is_dir():  # a copy of the project runs its own code, not the checkout's
        full_env["PYTHONPATH"] = str(Path(cwd) / "src")
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# The project's git ignore rules: patient data (every DVC output under data/, models/, pictures of slices) is ignored
# on every branch, not only where DVC wrote its own .gitignore files.
IGNORE_FILES = (".gitignore", "data/.gitignore", "data/validated/.gitignore", "models/.gitignore",
                "reports/.gitignore")


def make_dvc_project(repo: Path, overrides: dict | None = None):
    """A fresh git + DVC repository at ``repo`` holding this project's pipeline with tiny params. Returns
    a function that rewrites params.yaml with more overrides; the repository path is ``fn.path``."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "prefect.toml", *IGNORE_FILES):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, repo / name)
    for folder in ("stages", "src", "flows"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(PROJECT_ROOT / folder, repo / folder, ignore=ignore)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())

    def write_params(more: dict | None = None) -> None:
        merged = merge_params(merge_params(merge_params(params, TINY_PARAMS), overrides or {}), more or {})
        (repo / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))

    write_params()
    init_git_dvc(repo)
    run_cmd(["git", "config", "user.email", "test@example.com"], repo)
    run_cmd(["git", "config", "user.name", "test"], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "pipeline"], repo)
    write_params.path = repo  # type: ignore[attr-defined]
    return write_params


# The reproduced project's params: the tiny ones, promotion by any score (so that a model is promoted), and 6
# epochs, since on the 5 tiny cases a U-Net of three regions needs 4 or so to leave its all-tumour start (the README's
# experiments must change the metrics).
REPRODUCED = {"promote": {"min_dice": 0.0}, "train": {"epochs": 6}}


def reproduced_copy(dest: Path) -> tuple[Path, str]:
    """A copy at ``dest`` of the run's one project on :data:`REPRODUCED` params through which a whole `dvc repro` ran
    (built once per test run, :func:`tests.support.once.built_once`), its outputs, DVC cache and MLflow store
    included and its results not committed, as a user's project is after a first run; and that `dvc repro`'s
    output. For a test about what comes after a first run: a from-scratch run is the proof only in
    tests/test_lifecycle.py, tests/test_dvc_pipeline.py's byte-identical rerun and the team's tests."""
    folder = built_once("reproduced", _reproduce)
    origin = folder / "project"
    shutil.copytree(origin, dest, symlinks=True, ignore=lambda path, names: ["tmp"] if path == str(origin / ".dvc")
                    else [])  # .dvc/tmp: the origin's locks and the hashes DVC keeps by inode
    _moved_mlflow_store(dest, origin)
    return dest, (folder / "repro.out").read_text()


def _reproduce(folder: Path) -> None:
    repo = make_dvc_project(folder / "project", REPRODUCED).path
    (folder / "repro.out").write_text(run_cmd(["dvc", "repro"], repo, timeout=900).stdout)


def _moved_mlflow_store(repo: Path, origin: Path) -> None:
    """MLflow's store records absolute paths (artifact locations, source files): in a copy of a workspace each names
    the copy's own file, so that what a test changes stays in its copy. (The artifacts are left as they are: a
    registered version's files are checked against their registered digests when loaded.)"""
    old, new = str(origin.resolve()), str(repo.resolve())
    db = sqlite3.connect(repo / "mlflow" / "mlflow.db")
    try:
        with db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")').fetchall()]:
                    db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                               f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0', (old, new, old))
    finally:
        db.close()


def init_git_dvc(repo: Path) -> None:
    """`git init` (branch main), then what `dvc init` and `dvc config core.analytics false` write, staged as `dvc
    init` stages it: copied from a repository those real commands made once per test process (:func:`_dvc_init`),
    since each dvc process costs about a second of CPU and the suite makes some thirty scratch repositories."""
    run_cmd(["git", "init", "-q", "-b", "main"], repo)
    made = _dvc_init()
    files = sorted(str(p.relative_to(made)) for p in made.rglob("*")  # not git's, nor DVC's scratch space
                   if p.is_file() and p.relative_to(made).parts[0] != ".git" and p.parent != made / ".dvc" / "tmp")
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(made / name, repo / name)
    run_cmd(["git", "add", "--", *files], repo)


@functools.cache
def _dvc_init() -> Path:
    """A git repository in which the real `dvc init -q` and `dvc config core.analytics false` ran (this process's
    copy; removed at exit)."""
    made = Path(tempfile.mkdtemp(prefix="brats-dvc-init-"))
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run_cmd(args, made)
    return made


def require(found: bool, what: str) -> None:
    """Skip a test that needs something missing here, saying what; under CI (CI=true) fail instead, since CI must
    run every test and `make test` installs what they need."""
    if found:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what}; CI runs every test (make test installs it)", pytrace=False)
    pytest.skip(what)


def bash_commands(markdown: str) -> list[str]:
    """Command lines of the ```bash blocks of ``markdown``, comments stripped (as tests/test_readme.py reads them)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines

