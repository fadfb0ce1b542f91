"""Driving DVC from an orchestrator: one `dvc repro <stage>` at a time per workspace, with a lock.

Two locks keep drivers apart. Our own workspace lock (:func:`workspace_lock`) keeps two pipeline runs from
interleaving their stages; DVC's lock (``.dvc/tmp/lock`` and ``.dvc/tmp/rwlock``) keeps any two `dvc`
processes apart, a person's manual `dvc repro` included. A stage that finds DVC busy waits and retries within
a bound (:func:`run_dvc_stage`); whoever gives up says so in one sentence (a :class:`UserError`).

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

from brats_seg.errors import UserError
from brats_seg.orchestration.dvc import dvc_popen, dvc_stages

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("source", "download", "validate", "slice", "train", "evaluate", "register", "report")
LOCK_NAME = "brats-seg-pipeline.lock"
RELAYED_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
                  "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
STAGE_LINE = "stage_line"  # the log record attribute that marks a line relayed from a stage's output
# What dvc prints when another dvc process holds the repository (dvc/lock.py) or a stage's files (dvc/rwlock.py).
DVC_BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited with an error."""


class DvcBusy(Exception):
    """`dvc repro` could not start: another dvc process holds the workspace; the message is dvc's line."""


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


def run_dvc_stage(stage: str, workdir: str | Path = ".", logger: logging.Logger | None = None,
                  busy_wait_s: float = 0.0, single: bool = False) -> dict:
    """``dvc repro <stage>`` in ``workdir``; streams its output to ``logger``; returns what happened:
    ``{"stage", "ran", "status", "seconds", "waited_s"}``, status ``ran``, ``skipped`` (up to date) or
    ``checked`` (an ``always_changed`` stage such as ``source``, which runs every time). With ``single``,
    ``dvc repro --single-item``: the stage alone, its upstream stages taken as done (the flow runs them first);
    otherwise dvc brings them up to date too (and reruns ``source`` for every stage).

    While another dvc process holds the workspace, waits (1 s, doubling up to 30 s) and retries, for up to
    ``busy_wait_s`` seconds in all; then raises UserError. dvc takes its lock before it runs anything, so a
    refused attempt changed nothing and a retry is safe.
    """
    logger = logger or log
    start = time.perf_counter()
    deadline, delay, waited = time.monotonic() + busy_wait_s, 1.0, 0.0
    while True:
        try:
            lines = _repro(["--single-item", stage] if single else [stage], workdir, logger)
            break
        except DvcBusy as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                held = f" and held it for all of the {busy_wait_s:.0f} s this run waits" if busy_wait_s else ""
                raise UserError(f"dvc is busy in {Path(workdir).resolve()}: another dvc process (a manual `dvc "
                                f"repro`?) holds its lock{held}; let it finish, then rerun, or let the run wait "
                                f"longer (--dvc-wait-s, flow parameter dvc_wait_s).") from None
            logger.warning("dvc is busy (%s); retrying `dvc repro %s` in %.0f s", exc, stage, min(delay, left))
            time.sleep(min(delay, left))
            waited += min(delay, left)
            delay = min(2 * delay, 30.0)
    ran = any(line.startswith(f"Running stage '{stage}'") for line in lines)
    status = ("checked" if stage in always_changed_stages(workdir) else "ran") if ran else "skipped"
    return {"stage": stage, "ran": ran, "status": status, "seconds": round(time.perf_counter() - start, 2),
            "waited_s": round(waited, 2)}


def relay(logger: logging.Logger, line: str) -> None:
    """Log a line of a stage's output at its own level: a stage under a flow prints ``LEVEL message`` (no time:
    the flow's log stamps it), which becomes ``message`` at LEVEL, so a warning reads as one in Prefect's log
    and its UI and the level is not said twice. Other lines (dvc's own) are INFO. Each record carries
    ``stage_line`` (:data:`STAGE_LINE`), so that a flow can tell a stage's words from its own."""
    level, _, message = line.partition(" ")
    if level in RELAYED_LEVELS and message:
        logger.log(RELAYED_LEVELS[level], "%s", message, extra={STAGE_LINE: True})
    else:
        logger.info("%s", line, extra={STAGE_LINE: True})


def _repro(args: list[str], workdir: str | Path, logger: logging.Logger) -> list[str]:
    """One attempt of ``dvc repro ARGS``: its output lines (all of them; only what a person needs is logged);
    DvcBusy or StageFailed when it fails."""
    proc = dvc_popen(["repro", *args], workdir)
    lines = []
    hints = dvc_hints(workdir)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip() and not line.strip().startswith(hints):
            relay(logger, line.rstrip())
    code = proc.wait()
    if code != 0:
        busy = next((line for line in lines if any(marker in line for marker in DVC_BUSY)), None)
        if busy is not None:
            raise DvcBusy(busy.removeprefix("ERROR: ").strip())
        said = next((line for line in lines if line.startswith("error: ")), None)  # a stage's one sentence
        if said is not None:
            raise UserError(f"dvc repro {args[-1]}: {said.removeprefix('error: ')}")
        tail = "\n".join(lines[-15:])
        raise StageFailed(f"dvc repro {' '.join(args)} failed with exit code {code}:\n{tail}")
    return lines


# DVC's advice after every `dvc repro`: which files to `git add`, how to auto-stage, and `dvc push`, and its
# bookkeeping lines (the command it runs, the lock file it writes). A flow runs a repro per stage, so these would
# repeat after each; the flow's summary says what ran instead.
_GIT_HINTS = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
              "Updating lock file", "Generating lock file", "> python -m stages.",
              "Data and pipelines are up to date.")  # after each skipped stage's own "didn't change, skipping"
_PUSH_HINT = "Use `dvc push` to send your updates to remote storage."


def dvc_hints(workdir: str | Path = ".") -> tuple[str, ...]:
    """The starts of DVC's advice lines a flow leaves out of its log: the git hints always, the `dvc push`
    hint until a default remote is configured (it has nowhere to push before)."""
    return _GIT_HINTS if default_remote(workdir) else (*_GIT_HINTS, _PUSH_HINT)


def default_remote(workdir: str | Path = ".") -> str | None:
    """``core.remote`` from the project's DVC config files (``.dvc/config``, then ``.dvc/config.local``)."""
    import configparser

    found = None
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser(strict=False)
        try:
            parser.read(Path(workdir) / ".dvc" / name)
        except configparser.Error:
            continue
        found = parser.get("core", "remote", fallback=found)
    return found.strip().strip("'\"") if found else None


def always_changed_stages(workdir: str | Path = ".") -> set[str]:
    """Stages of ``workdir``/dvc.yaml marked ``always_changed`` (they run on every repro)."""
    return {name for name, stage in dvc_stages(workdir).items() if stage.get("always_changed")}


def flow_stages(workdir: str | Path = ".") -> list[str]:
    """What the pipeline flow runs, in order: :data:`STAGES`, then any other stage of ``workdir``/dvc.yaml in
    the file's order (one added since; the flow runs those with their upstream check, see :func:`run_dvc_stage`)."""
    return [*STAGES, *(name for name in dvc_stages(workdir) if name not in STAGES)]


@contextlib.contextmanager
def working_directory(path: str | Path) -> Iterator[None]:
    """Run a block with ``path`` as the current directory (the registry's default store is relative)."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
