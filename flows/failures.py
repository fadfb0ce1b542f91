"""How a flow fails on a user's error: one sentence, no traceback.

A :class:`~brats_seg.errors.UserError` raised inside a flow would make Prefect log "Encountered exception
during execution" with the whole traceback, in the flow and again in every flow that called it. Instead
:func:`fail_on_user_error` logs the sentence once as an error and ends the run in a Failed state whose
message is that sentence; calling the flow still raises the same UserError, so a command line can print it
as ``error: <sentence>``. A task that raises one (dvc stayed busy) fails as usual, and Prefect's log line
for it keeps the exception's sentence but not its traceback (:class:`UserErrorsWithoutTraceback`).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from prefect import get_run_logger
from prefect.states import Failed

from brats_seg.errors import UserError
from brats_seg.orchestration.driver import STAGE_LINE

F = TypeVar("F", bound=Callable[..., object])


def fail_on_user_error(func: F) -> F:
    """Wrap a flow function (under ``@flow``): a UserError ends the run Failed with its one sentence."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            get_run_logger().error("%s", exc)
            return Failed(message=str(exc), data=exc)

    return wrapper  # type: ignore[return-value]


# What Prefect raises when its temporary API server (no PREFECT_API_URL) does not answer within
# server.ephemeral.startup_timeout_seconds (prefect.toml).
SERVER_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def server_start_in_one_sentence(func: F) -> F:
    """Wrap a flow's command-line entry: Prefect's temporary server timing out becomes one UserError sentence."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except RuntimeError as exc:
            if SERVER_TIMEOUT not in str(exc):
                raise
            from prefect.settings import get_current_settings

            limit = get_current_settings().server.ephemeral.startup_timeout_seconds
            raise UserError(f"Prefect's temporary API server did not start within {limit} s (a busy machine): run the "
                            f"command again, raise server.ephemeral.startup_timeout_seconds in prefect.toml, or start "
                            f"a server once (prefect server start) and set PREFECT_API_URL=http://127.0.0.1:4200/api."
                            ) from None

    return wrapper  # type: ignore[return-value]


class UserErrorsWithoutTraceback(logging.Filter):
    """Drop the traceback from a log record about a UserError: its message already says what to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def is_not_a_user_error(task: object, task_run: object, state: object) -> bool:
    """A task's ``retry_condition_fn``: retry any failure except a UserError (retrying cannot fix those)."""
    try:
        state.result()  # type: ignore[attr-defined] - raises the task's exception
    except UserError:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth a retry
        return True
    return True


class TemporaryServerNotices(logging.Filter):
    """Prefect's notice that it starts a temporary server is two lines under one timestamp, the second a link to
    its documentation: keep the first (one timestamp per line; the README says how to run a server). Its notice
    that it stops the server comes at exit, after the command's own last line (the summary, the demo's next
    steps): dropped, it says nothing a person acts on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        if record.msg.startswith("Starting temporary server") and "\n" in record.msg:
            record.msg = record.msg.split("\n", 1)[0]
        return not record.msg.startswith("Stopping temporary server")


class StageWarningsOncePerRun(logging.Filter):
    """A warning that several stages of one flow run each give for themselves (every stage that loads a network
    says "no CUDA GPU available" in its own process) is logged once per flow run: the first time. Only lines
    relayed from a stage's output (:data:`STAGE_LINE`); the flow's own warnings (dvc busy, retrying) all stay."""

    def __init__(self, remember: int = 1000) -> None:
        super().__init__()
        self.remember = remember
        self.said: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not getattr(record, STAGE_LINE, False):
            return True
        key = (str(getattr(record, "flow_run_id", "")), record.getMessage())
        if key in self.said:
            return False
        self.said[key] = None
        while len(self.said) > self.remember:  # a worker runs flows for months: forget the oldest runs' lines
            self.said.popitem(last=False)
        return True


def _add_filter(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):  # once, however often this module is reloaded
        logger.addFilter(kind())


_add_filter(logging.getLogger("prefect"), TemporaryServerNotices)  # the temporary server logs on it directly
_add_filter(logging.getLogger("prefect.task_runs"), UserErrorsWithoutTraceback)
_add_filter(logging.getLogger("prefect.task_runs"), StageWarningsOncePerRun)


def run_name(what: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``WHAT DETAIL YYYY-MM-DD HH:MMZ``, the detail from the run's parameters (the
    stages asked for, the version to promote), the time from its schedule or its start, in UTC."""

    def name() -> str:
        from datetime import datetime, timezone

        from prefect.runtime import flow_run

        params = flow_run.parameters or {}
        detail = "+".join(params.get("stages") or []) if "stages" in params else ""
        if "version" in params or "force" in params:
            detail = (f"v{params['version']}" if params.get("version") else "challenger") + \
                (" --force" if params.get("force") else "")
        when = flow_run.scheduled_start_time or datetime.now(timezone.utc)
        return " ".join(p for p in (what, detail or None, f"{when.astimezone(timezone.utc):%Y-%m-%d %H:%M}Z") if p)

    return name
