"""Running the `dvc` command line from this Python environment (so its stages find this environment's
`python` and brats_seg, however the calling command was started)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from brats_seg.console import TIME_VARIABLE
from brats_seg.errors import UserError
from brats_seg.orchestration.provenance import read_dvc_file


def dvc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with this interpreter's bin folder first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}


def dvc_executable() -> str:
    found = shutil.which("dvc", path=dvc_env()["PATH"])
    if found is None:
        raise UserError("the dvc command is not installed in this environment; run `make setup` (or "
                        "`pip install -e .`) in the project folder.")
    return found


def dvc_popen(args: list[str], cwd: str | Path, **kwargs: object) -> subprocess.Popen:
    """Start ``dvc ARGS`` in ``cwd``; stdout and stderr merged, as text."""
    # the caller logs each line with its own timestamp (Prefect): the stages leave theirs out
    return subprocess.Popen([dvc_executable(), *args], cwd=cwd, env=dvc_env({TIME_VARIABLE: "0"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def dvc_run(args: list[str], cwd: str | Path) -> subprocess.CompletedProcess:
    """Run ``dvc ARGS`` in ``cwd`` and capture its output."""
    return subprocess.run([dvc_executable(), *args], cwd=cwd, env=dvc_env(), capture_output=True, text=True)


def dvc_stages(workdir: str | Path = ".") -> dict[str, dict]:
    """The stages of ``workdir``/dvc.yaml, by name, as written (``${...}`` not resolved); {} without the file."""
    doc = read_dvc_file(Path(workdir) / "dvc.yaml", "fix it or restore it (git checkout -- dvc.yaml)")
    stages = (doc.get("stages") if isinstance(doc, dict) else None) or {}
    return {name: stage for name, stage in stages.items() if isinstance(stage, dict)}
