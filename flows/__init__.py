"""Prefect flows of brats-seg. Telemetry is off unless the user turned it on explicitly."""

from __future__ import annotations

import brats_seg  # noqa: F401  (first: it turns telemetry off before Prefect reads its settings at import)


def _temporary_server_dies_with_us() -> None:
    """Prefect's temporary API server (no PREFECT_API_URL: ``prefect.server.api.server.SubprocessASGIServer``, a
    ``python -m uvicorn`` child) is stopped at exit, but a flow process killed with kill -9 would leave it running.
    Its Popen gets ``PR_SET_PDEATHSIG`` (Linux) so that the kernel kills it with the flow process. Only a server
    started from the main thread gets it: the signal follows the starting thread, not the process."""
    import ctypes
    import signal
    import subprocess
    import sys
    import threading
    import types

    from prefect.settings import get_current_settings

    if not sys.platform.startswith("linux") or get_current_settings().api.url:
        return
    from prefect.server.api import server  # what the temporary server needs anyway

    if isinstance(server.subprocess, types.SimpleNamespace):
        return
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it, before exec

    def die_with_parent() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    def popen(*args: object, **kwargs: object) -> subprocess.Popen:
        if threading.current_thread() is threading.main_thread() and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = die_with_parent
        return subprocess.Popen(*args, **kwargs)

    server.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})


_temporary_server_dies_with_us()
