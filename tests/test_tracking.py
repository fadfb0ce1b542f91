"""The MLflow side of runs against a real sqlite store: runs of killed processes are closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
from brats_seg.registry import tracking

_HOLD_A_RUN = """
import sys, time
from brats_seg.registry import tracking
with tracking.start_run("orphans") as run:
    open(sys.argv[1], "w").write(run.run_id)
    time.sleep(600)
"""


def test_a_run_whose_process_was_killed_is_closed_as_killed_when_the_next_run_starts(store):
    marker = store / "run_id.txt"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_A_RUN, str(marker)], cwd=store)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = marker.read_text()
    assert tracking.get_run(killed)["status"] == "RUNNING"

    with tracking.start_run("orphans") as other_host:  # a run of another machine: not ours to judge
        pass
    client = mlflow.MlflowClient(tracking.tracking_uri())
    client.update_run(other_host.run_id, status="RUNNING")
    client.set_tag(other_host.run_id, tracking.HOST_TAG, "another-host")

    with tracking.start_run("orphans") as run:
        assert tracking.get_run(run.run_id)["status"] == "RUNNING"  # the live one is left alone
    assert tracking.get_run(killed)["status"] == "KILLED"
    assert tracking.get_run(other_host.run_id)["status"] == "RUNNING"
    assert tracking.get_run(run.run_id)["status"] == "FINISHED"


def test_params_compare_equal_whether_read_from_yaml_or_from_a_stage_output():
    assert tracking.param_strings({"slice": {"modalities": ("flair", "t1"), "size": 64}}) == \
        tracking.param_strings({"slice": {"modalities": ["flair", "t1"], "size": 64}}) == \
        {"slice.modalities": '["flair", "t1"]', "slice.size": "64"}
