"""Errors a user can cause, and the one place that turns them into one clear sentence."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

from brats_seg.runtime import tune_for_a_short_process

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A problem with the user's input (params, files, credentials); its message says what to fix."""


class ConfigError(UserError):
    """A params.yaml section has an unknown key, a missing key or a value of the wrong type."""


class DataError(UserError):
    """Input data cannot be used as it is (no cases, unreadable archive, bad layout)."""


class DownloadError(UserError):
    """A download failed for good (after retries) or its checksum did not match."""


class DiskFullError(UserError):
    """A write failed because the disk (or the user's quota) is full."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("database or disk is full", "No space left on device", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it was raised from says the disk is full: an OSError ENOSPC/EDQUOT,
    or sqlite's "database or disk is full"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def disk_full_error(path: str | os.PathLike, what: str = "", needed: int | None = None,
                    fix: str = "point that path at a disk with room") -> DiskFullError:
    """The one sentence for a full disk under ``path`` (``what`` it was writing; ``needed`` bytes if known)."""
    import shutil
    from pathlib import Path

    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    need = f"about {_size(needed)} needed, " if needed else ""
    return DiskFullError(f"the disk holding {folder} is full{f' while writing {what}' if what else ''} ({need}"
                         f"{_size(usage.free)} free of {_size(usage.total)}); free space there or {fix}, then rerun.")


def _tracking_db() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow/mlflow.db")
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else "."


_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URI in it replaced: ``scheme://user:secret@host`` becomes
    ``scheme://user:***@host``. Everything that prints or logs a URI the user gave passes it through this."""
    return _USERINFO.sub(r"\g<head>:***@", text)


def exit_on_user_error(func: F) -> F:
    """Wrap a CLI entry point: a UserError prints its sentence to stderr and exits with status 2. The process's
    garbage collector is tuned for a short program first (:mod:`brats_seg.runtime`)."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        tune_for_a_short_process()
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, UserError) or not is_disk_full(exc):
                raise
            if "database or disk is full" in str(exc):
                raise disk_full_error(_tracking_db(), "the MLflow tracking database", fix="set MLFLOW_TRACKING_URI "
                                      "to a store on a disk with room") from None
            raise disk_full_error(getattr(exc, "filename", None) or os.getcwd()) from None

    return _say_user_errors(wrapper)  # type: ignore[return-value]


def _say_user_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            logging.getLogger("brats_seg").debug("user error", exc_info=True)
            if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks meet the same error: rank 0 says it
                print(f"error: {mask_credentials(str(exc))}", file=sys.stderr)  # noqa: T201 - the CLI's one sentence
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
