"""Run a function over many cases, with a progress bar, keeping input order: in this machine's process pool, or
on a Dask cluster when one is given (:func:`choose_executor`).

The two give the same results: the function is the same, every item is computed exactly once, results come back
in the order of the items, and a failure raises the same exception (that of the first failing item in input
order). Dask workers must run this project's code in the stage's working directory, so that the stage's relative
paths name the same files and the same code computes them; a task refuses to run on a worker where either
differs, with one sentence saying how to start workers instead of a wrong result.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

from brats_seg.errors import UserError
from brats_seg.progress import progress

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")

ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"  # Dask's own variable for the scheduler a client connects to
WORKERS_TIMEOUT_S = 120  # for the first worker to join a scheduler that has none


@dataclasses.dataclass(frozen=True)
class Executor:
    """Where per-case work runs: this machine's process pool (``address`` empty) or the Dask scheduler at
    ``address``; ``origin`` says what named it (``DASK_SCHEDULER_ADDRESS`` or ``base.dask_address``)."""

    address: str = ""
    origin: str = ""

    @property
    def is_dask(self) -> bool:
        return bool(self.address)


LOCAL = Executor()


def choose_executor(kind: str, address: str, environ: Mapping[str, str]) -> Executor:
    """The executor for params ``base.executor`` (``kind``) and ``base.dask_address`` (``address``), given the
    environment of the running stage (read when the stage runs, never at import).

    ``local``: this machine's processes. ``dask``: the scheduler at ``address``, else at $DASK_SCHEDULER_ADDRESS;
    one of them must be set. ``auto``: like ``dask`` when either is set, else like ``local``.
    """
    if kind == "local":
        return LOCAL
    if address:
        return Executor(address, "base.dask_address")
    if environ.get(ENV_ADDRESS, "").strip():
        return Executor(environ[ENV_ADDRESS].strip(), ENV_ADDRESS)
    if kind == "dask":
        raise UserError(f"base.executor is dask but no scheduler is named; set base.dask_address or {ENV_ADDRESS} "
                        f"(e.g. tcp://10.0.0.5:8786), or set base.executor to local.")
    return LOCAL


def resolve_workers(workers: int, n_items: int | None = None) -> int:
    """``workers <= 0`` means every core; never more workers than items."""
    n = workers if workers > 0 else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
    return max(1, min(n, n_items)) if n_items else max(1, n)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``), so that a killed
    stage (kill -9, an OOM kill) leaves no worker behind, blocked on a queue nobody reads. If the parent is
    already gone (``parent_pid`` given and no longer the parent), exit at once. Elsewhere, does nothing."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(parent_pid: int | None = None) -> None:
    """A local pool's worker (``parent_pid``: the stage's) dies with the stage; a Dask worker (None) is Dask's."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    import torch  # each worker uses one thread: the pool provides the parallelism

    torch.set_num_threads(1)


def run_parallel(func: Callable[[A], R], items: Sequence[A], workers: int = 0, desc: str = "",
                 executor: Executor = LOCAL) -> list[R]:
    """``[func(x) for x in items]`` with a progress bar: over a process pool of ``workers`` (0: all cores), or
    on the Dask cluster of ``executor`` (its workers decide the parallelism; ``workers`` is not used).

    ``func`` must be a module-level function (or a partial of one). Results come back in the order of
    ``items``; when items fail, the exception of the first failing item in input order is raised, after the
    other items have run.
    """
    bar = progress(total=len(items), desc=desc, unit="case")
    try:
        if executor.is_dask:
            outcomes = _run_dask(func, items, executor, desc, bar)
        else:
            outcomes = _run_local(func, items, resolve_workers(workers, len(items)), bar)
    finally:
        bar.close()
    failed = next((o for o in outcomes if isinstance(o, _Failure)), None)
    if failed is not None:
        raise failed.error.with_traceback(failed.traceback)
    return outcomes  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class _Failure:
    error: BaseException
    traceback: Any = None


def _run_local(func: Callable[[A], R], items: Sequence[A], n: int, bar: Any) -> list[R | _Failure]:
    if n == 1:  # in this process; the first failure stops the run, as it would be the one raised anyway
        results: list[R | _Failure] = []
        for item in items:
            results.append(func(item))
            bar.update()
        return results
    outcomes: list[R | _Failure | None] = [None] * len(items)
    with ProcessPoolExecutor(max_workers=n, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(func, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            error = future.exception()
            outcomes[futures[future]] = _Failure(error, error.__traceback__) if error else future.result()
            bar.update()
    return outcomes  # type: ignore[return-value]


def _run_dask(func: Callable[[A], R], items: Sequence[A], executor: Executor, desc: str,
              bar: Any) -> list[R | _Failure]:
    from distributed import as_completed as completed

    with _connect(executor) as client:
        n_workers = len(client.scheduler_info()["workers"])
        log.info("%s: %d item(s) on the Dask cluster at %s (%s, %d worker(s))", desc or "run", len(items),
                 executor.address, executor.origin, n_workers)
        name = getattr(func, "func", func).__name__
        keys = [f"{name}-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(items))]
        futures = client.map(_remote_call, items, key=keys, pure=False, work=func, cwd=os.getcwd(),
                             code=code_fingerprint())
        order = {f.key: i for i, f in enumerate(futures)}
        outcomes: list[R | _Failure | None] = [None] * len(items)
        for future in completed(futures, loop=client.loop):
            if future.status == "error":
                outcomes[order[future.key]] = _Failure(future.exception(), future.traceback())
            else:
                outcomes[order[future.key]] = future.result()
            bar.update()
        return outcomes  # type: ignore[return-value]


def _connect(executor: Executor) -> Any:
    """A ``distributed.Client`` of the scheduler at ``executor.address`` with at least one worker, or one sentence.
    How long connecting may take is Dask's own setting (``distributed.comm.timeouts.connect``, 30 s by default)."""
    from distributed import Client

    where = f"the Dask scheduler at {executor.address} (named by {executor.origin})"
    try:
        client = Client(executor.address, set_as_default=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot reach {where}: {type(exc).__name__}: {exc}; start it (dask scheduler), or set "
                        f"base.executor: local to run on this machine's processes.") from None
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        client.close()
        raise UserError(f"{where} has had no worker for {WORKERS_TIMEOUT_S} s; start workers from this project's "
                        f"environment and directory (dask worker {executor.address}).") from None
    return client


def _remote_call(item: A, work: Callable[[A], R], cwd: str, code: str) -> R:
    """Run on a Dask worker: ``work(item)`` once the worker is known to run in ``cwd`` with code ``code``."""
    here = os.getcwd()
    if Path(here).resolve() != Path(cwd).resolve():
        raise UserError(f"a Dask worker ({_worker_name()}) runs in {here} but the stage in {cwd}, so relative paths "
                        f"would name other files; start the workers in the project directory (cd {cwd} && "
                        f"dask worker ADDRESS).")
    if code_fingerprint() != code:
        raise UserError(f"a Dask worker ({_worker_name()}) runs other brats_seg code than the stage (code changed "
                        f"since it started, or another checkout); restart the workers from this project's "
                        f"environment so that results match a local run.")
    _one_thread()
    return work(item)


@functools.cache
def _one_thread() -> None:
    _init_worker()  # as in the local pool: the cluster's workers provide the parallelism


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 of the brats_seg package's source files (relative paths and bytes), taken once per process,
    when first asked: a process that imported older code keeps the older fingerprint."""
    root = Path(__file__).resolve().parents[1]  # the brats_seg package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
