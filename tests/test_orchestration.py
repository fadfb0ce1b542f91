"""The workspace lock that keeps two pipeline runs from driving dvc at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from brats_seg.errors import UserError
from brats_seg.orchestration import workspace_lock


def test_a_second_holder_waits_for_the_first(tmp_path):
    order = []

    def first() -> None:
        with workspace_lock(tmp_path):
            order.append("first in")
            time.sleep(1.0)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    while not order:
        time.sleep(0.01)
    with workspace_lock(tmp_path, timeout_s=30):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_a_second_holder_gives_up_with_one_sentence_naming_the_holder(tmp_path):
    with workspace_lock(tmp_path):
        start = time.monotonic()
        with pytest.raises(UserError, match=rf"another pipeline run \(pid {os.getpid()} since .*\) is driving dvc"):
            with workspace_lock(tmp_path, timeout_s=1.0):
                pass
        assert time.monotonic() - start >= 1.0


_HOLDER = """
import sys, time
from brats_seg.orchestration import workspace_lock
with workspace_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_killed_holder_leaves_the_workspace_free(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"holding"
    with pytest.raises(UserError):
        with workspace_lock(tmp_path):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with workspace_lock(tmp_path):  # the OS released the lock with the process: nothing is left stale
        pass
