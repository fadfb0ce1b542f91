"""What a test run builds once and every worker shares: xdist's workers are processes, so a session fixture is built
once per worker; these are built once per run, by the first test that asks, in a folder the run's top process made
(tests/conftest.py's pytest_configure), while every other caller, on any worker, waits for it."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

RUN_DIR = "BRATS_TEST_RUN_DIR"  # the folder's path, inherited by the workers; removed when the run ends


def built_once(name: str, build: Callable[[Path], None]) -> Path:
    """The run's folder ``name``, filled by ``build(folder)`` on the first call. A build that failed, or whose process
    was killed, is started again from an empty folder by the next caller: only a finished one is marked built."""
    run = Path(os.environ[RUN_DIR])
    folder, built = run / name, run / f"{name}.built"
    with open(run / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder
