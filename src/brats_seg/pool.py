"""Run a function over many cases in a process pool, with a progress bar, keeping input order."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from brats_seg.progress import progress

A = TypeVar("A")
R = TypeVar("R")


def resolve_workers(workers: int, n_items: int | None = None) -> int:
    """``workers <= 0`` means every core; never more workers than items."""
    n = workers if workers > 0 else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
    return max(1, min(n, n_items)) if n_items else max(1, n)


def _init_worker() -> None:
    import torch  # each worker uses one thread: the pool provides the parallelism

    torch.set_num_threads(1)


def run_parallel(func: Callable[[A], R], items: Sequence[A], workers: int = 0, desc: str = "") -> list[R]:
    """``[func(x) for x in items]`` over a process pool of ``workers`` (0: all cores), with a progress bar.

    ``func`` must be a module-level function. An exception in any item is raised here after the pool
    shuts down; results come back in the order of ``items``.
    """
    n = resolve_workers(workers, len(items))
    results: list[R | None] = [None] * len(items)
    bar = progress(total=len(items), desc=desc, unit="case")
    if n == 1:
        for i, item in enumerate(items):
            results[i] = func(item)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=n, initializer=_init_worker) as pool:
            futures = {pool.submit(func, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    return results  # type: ignore[return-value]
