"""An entry point tunes its process's garbage collector (brats_seg.runtime); the library alone leaves a caller's
collector as it found it. Each case runs in a fresh interpreter: the settings are per process."""

from __future__ import annotations

import subprocess
import sys

from brats_seg.runtime import GEN0_THRESHOLD

# An exit handler registered before anything else runs last: it sees what the entry point left for the interpreter.
PROBE = """
import atexit, gc
atexit.register(lambda: print("threshold", gc.get_threshold()[0], "frozen", gc.get_freeze_count() > 0))
"""


def _run(body: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE + body], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_an_entry_point_collects_young_objects_less_often_and_freezes_the_heap_at_exit():
    body = ("from brats_seg.errors import exit_on_user_error\n"
            "main = exit_on_user_error(lambda: None)\nmain()\nmain()\n")
    assert _run(body) == f"threshold {GEN0_THRESHOLD} frozen True"


def test_importing_the_library_leaves_the_collector_alone():
    default = _run("")  # CPython's own settings (700 in 3.11)
    assert default.endswith("frozen False") and default != f"threshold {GEN0_THRESHOLD} frozen False", default
    assert _run("import brats_seg.errors, brats_seg.runners.train\n") == default


def test_a_collector_turned_off_stays_off():
    body = ("import gc\ngc.set_threshold(0)\nfrom brats_seg.errors import exit_on_user_error\n"
            "exit_on_user_error(lambda: None)()\n")
    assert _run(body) == "threshold 0 frozen True"
