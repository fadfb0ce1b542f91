"""Driving DVC from an orchestrator: one `dvc repro <stage>` at a time per workspace, with a lock.

Prefect flows in flows/ call these functions; nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from brats_seg.config import BaseParams, load_section, read_params
from brats_seg.dvc_cli import dvc_popen
from brats_seg.errors import UserError
from brats_seg.io.tables import read_json

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("download", "validate", "slice", "train", "evaluate", "register")
LOCK_NAME = "brats-seg-pipeline.lock"


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited with an error."""


@contextlib.contextmanager
def workspace_lock(workdir: str | Path = ".", timeout_s: float = 0.0) -> Iterator[None]:
    """Hold the workspace's pipeline lock (an OS file lock: released even if the process dies).

    A second holder waits up to ``timeout_s`` seconds, then fails with one sentence.
    """
    path = Path(workdir) / ".dvc" / "tmp" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    raise UserError(f"another pipeline run ({holder}) is driving dvc in {Path(workdir).resolve()}; "
                                    f"wait for it to finish, or stop it, then retry.") from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_dvc_stage(stage: str, workdir: str | Path = ".", logger: logging.Logger | None = None) -> dict:
    """``dvc repro <stage>`` in ``workdir``; streams its output to ``logger``; returns what happened."""
    logger = logger or log
    start = time.perf_counter()
    proc = dvc_popen(["repro", stage], workdir)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        logger.info("%s", line.rstrip())
    code = proc.wait()
    seconds = round(time.perf_counter() - start, 2)
    if code != 0:
        tail = "\n".join(lines[-15:])
        raise StageFailed(f"dvc repro {stage} failed with exit code {code}:\n{tail}")
    ran = any(line.startswith(f"Running stage '{stage}'") for line in lines)
    return {"stage": stage, "ran": ran, "seconds": seconds}


def pipeline_summary(workdir: str | Path, results: list[dict]) -> dict:
    """Stages run or skipped, with timings, and the registered model with its test metrics."""
    base = load_section(BaseParams, read_params(Path(workdir) / "params.yaml"), "base")
    summary: dict = {"stages": results}
    registered = Path(workdir) / base.registered_report
    if registered.is_file():
        summary["model"] = read_json(registered)
    evaluation = Path(workdir) / base.eval_report
    if evaluation.is_file():
        summary["test"] = {region: {k: v for k, v in stats.items() if k.endswith(("dice_mean", "hd95_median"))}
                           for region, stats in read_json(evaluation).items() if isinstance(stats, dict)}
    return summary


@contextlib.contextmanager
def working_directory(path: str | Path) -> Iterator[None]:
    """Run a block with ``path`` as the current directory (the registry's default store is relative)."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
