"""Errors a user can cause, and the one place that turns them into one clear sentence."""

from __future__ import annotations

import functools
import logging
import os
import re
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


_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URI in it replaced: ``scheme://user:secret@host`` becomes
    ``scheme://user:***@host``. Everything that prints or logs a URI the user gave passes it through this."""
    return _USERINFO.sub(r"\g<head>:***@", text)


def exit_on_user_error(func: F) -> F:
    """Wrap a CLI entry point: a UserError prints its sentence to stderr and exits with status 2."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            logging.getLogger("brats_seg").debug("user error", exc_info=True)
            if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks meet the same error: rank 0 says it
                print(f"error: {mask_credentials(str(exc))}", file=sys.stderr)  # noqa: T201 - the CLI's one sentence to a person
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
