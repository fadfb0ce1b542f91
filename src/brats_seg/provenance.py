"""Where an artifact came from: the git commit and the DVC-recorded hashes of the data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def git_state(repo: str | Path = ".") -> dict[str, str]:
    """``{"commit": sha or "unknown", "dirty": "true"/"false"}`` for the repository at ``repo``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(bool(status.strip())).lower()}


def dvc_lock_hashes(paths: dict[str, str], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """``{name: md5}`` of the DVC outputs at ``paths`` (``{name: path}``) as recorded in dvc.lock.

    Paths that dvc.lock does not record (yet) are left out.
    """
    lock = Path(lock)
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    found = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            for name, path in paths.items():
                if Path(out.get("path", "")) == Path(path) and "md5" in out:
                    found[name] = out["md5"]
    return found
