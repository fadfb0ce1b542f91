"""Progress for people: a tqdm bar on a terminal, periodic one-line log updates everywhere else.

Where stderr is not a terminal (Prefect logs, CI, ``dvc repro > log``) a bar's carriage returns and cursor
codes would end up in the log; there the same object writes one plain line through :mod:`logging` at most
every ``interval_s`` seconds, and a last one when it finishes or stops early. A step done within
``interval_s`` says nothing: the line the caller logs about its result is enough.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("brats_seg.progress")

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, {remaining} left{postfix}"


class LogProgress(tqdm):
    """tqdm's counting and rate estimates, shown as log lines instead of a redrawn bar."""

    def __init__(self, *args: Any, interval_s: float = 15.0, **kwargs: Any) -> None:
        self._interval_s = interval_s
        self._last_line = time.monotonic()
        self._logged_n = 0
        kwargs.update(mininterval=min(interval_s, 1.0), bar_format=LOG_FORMAT, leave=False)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # noqa: ARG002 - tqdm's API
        now = time.monotonic()
        done = self.total is not None and self.n >= self.total
        due = now - self._last_line >= self._interval_s or (done and self._logged_n > 0)
        if self.n and self.n != self._logged_n and due:
            self._line(now)
        return True

    def _line(self, now: float) -> None:
        self._last_line, self._logged_n = now, self.n
        log.info("%s", self.format_meter(**self.format_dict))

    def close(self) -> None:
        done = self.total is not None and self.n >= self.total
        if not self.disable and self.n and self.n != self._logged_n and (self._logged_n or not done):
            self._line(time.monotonic())  # the last count of a long step, or where a step stopped early
        self.disable = True  # tqdm's own close would draw a bar
        super().close()


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (or updated by hand), with tqdm's keyword arguments."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    kwargs.pop("dynamic_ncols")
    return LogProgress(iterable, **kwargs)
