"""Errors a user can cause, and the one place that turns them into one clear sentence."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A problem with the user's input (params, files, credentials); its message says what to fix."""


class ConfigError(UserError):
    """A params.yaml section has an unknown key, a missing key or a value of the wrong type."""


class DataError(UserError):
    """Input data cannot be used as it is (no cases, unreadable archive, bad layout)."""


class DownloadError(UserError):
    """A download failed for good (after retries) or its checksum did not match."""


def exit_on_user_error(func: F) -> F:
    """Wrap a CLI entry point: a UserError prints its sentence to stderr and exits with status 2."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            logging.getLogger("brats_seg").debug("user error", exc_info=True)
            if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks meet the same error: rank 0 says it
                print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's one sentence to a person
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
