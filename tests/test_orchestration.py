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
from brats_seg.orchestration.driver import StageFailed, run_dvc_stage, workspace_lock
from tests.support.projects import init_git_dvc, run_cmd


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
from brats_seg.orchestration.driver import StageFailed, run_dvc_stage, workspace_lock
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


# --- dvc busy: another dvc process (a manual `dvc repro`) holds the workspace -----------------------------

_DVC_YAML = """stages:
  slow:
    cmd: python -c "import pathlib, time; time.sleep({sleep}); pathlib.Path('slow.txt').write_text('made')"
    outs: [slow.txt]
  after:
    cmd: python -c "import pathlib; pathlib.Path('after.txt').write_text(pathlib.Path('slow.txt').read_text())"
    deps: [slow.txt]
    outs: [after.txt]
  broken:
    cmd: python -c "raise SystemExit(3)"
"""


def _busy_repo(tmp_path, sleep: float):
    """A git + DVC repository whose stage `slow` is being reproduced by another `dvc repro` (a person's),
    which is inside its stage command when this returns; `after` depends on its output."""

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(_DVC_YAML.format(sleep=sleep))
    init_git_dvc(repo)
    manual = subprocess.Popen(["dvc", "repro", "slow"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    for line in manual.stdout:
        if line.startswith("Running stage 'slow'"):
            break
    return repo, manual


@pytest.mark.slow
def test_a_stage_that_finds_dvc_busy_waits_and_then_runs(tmp_path):
    repo, manual = _busy_repo(tmp_path, sleep=5)
    start = time.monotonic()
    result = run_dvc_stage("after", repo, busy_wait_s=60)
    assert manual.wait() == 0  # the person's run was not disturbed
    assert result["ran"] and result["status"] == "ran" and result["waited_s"] >= 1
    assert (repo / "after.txt").read_text() == "made"  # ran after `slow` had written its output
    assert time.monotonic() - start < 40


@pytest.mark.slow
def test_a_stage_gives_up_on_a_busy_dvc_with_one_sentence_and_fails_fast_otherwise(tmp_path):
    repo, manual = _busy_repo(tmp_path, sleep=12)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^dvc is busy in .*repo: another dvc process \(a manual `dvc repro`\?\) "
                                        r"holds its lock and held it for all of the 2 s this run waits; let it "
                                        r"finish, then rerun"):
        run_dvc_stage("after", repo, busy_wait_s=2)
    assert time.monotonic() - start < 11 and manual.poll() is None  # gave up while the other still ran
    assert manual.wait() == 0 and not (repo / "after.txt").exists()
    start = time.monotonic()
    with pytest.raises(StageFailed, match="dvc repro broken failed with exit code"):
        run_dvc_stage("broken", repo, busy_wait_s=60)  # a failing stage is not busy: no waiting
    assert time.monotonic() - start < 10


def test_dvc_push_advice_is_left_out_of_flow_logs_until_a_default_remote_exists(tmp_path):
    from brats_seg.orchestration.driver import default_remote, dvc_hints

    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    assert default_remote(tmp_path) is None
    assert "Use `dvc push` to send your updates to remote storage." in dvc_hints(tmp_path)
    local = "[core]\n    remote = team\n['remote \"team\"']\n    url = /mnt/x\n"
    (tmp_path / ".dvc" / "config.local").write_text(local)
    assert default_remote(tmp_path) == "team"
    assert not any("dvc push" in hint for hint in dvc_hints(tmp_path))
    assert "To track the changes with git" in dvc_hints(tmp_path)


def test_a_stages_lines_are_logged_at_their_own_level_without_saying_it_twice(tmp_path, caplog):
    """A stage under a flow prints `LEVEL message`: the flow's log gets `message` at LEVEL (a warning shows as one
    in Prefect's UI), and dvc's own lines stay INFO."""
    import logging


    (tmp_path / "talk.py").write_text('print("INFO sliced 3 cases")\n'
                                      'print("WARNING no CUDA GPU available: running on the CPU")\n')
    (tmp_path / "dvc.yaml").write_text("stages:\n  talk:\n    cmd: python talk.py\n")
    init_git_dvc(tmp_path)
    logger = logging.getLogger("tests.relay")
    with caplog.at_level(logging.INFO, logger="tests.relay"):
        result = run_dvc_stage("talk", tmp_path, logger)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "tests.relay"]
    assert result["ran"] and ("INFO", "sliced 3 cases") in said
    assert ("WARNING", "no CUDA GPU available: running on the CPU") in said
    assert ("INFO", "Running stage 'talk':") in said
    assert not [m for _, m in said if m.startswith(("INFO ", "WARNING "))], said



def test_a_warning_every_stage_gives_is_said_once_per_flow_run(tmp_path):
    """Every stage that loads a network decides its device in its own process, so on a machine without a GPU
    train, evaluate and register each print "no CUDA GPU available": a flow run logs the first only, a later run
    logs it again, and the flow's own warnings and a stage's other lines are all kept."""
    import logging

    from prefect.logging.loggers import PrefectLogAdapter

    from flows.failures import StageWarningsOncePerRun

    (tmp_path / "talk.py").write_text('print("INFO loaded the model")\n'
                                      'print("WARNING no CUDA GPU available: running on the CPU")\n')
    (tmp_path / "dvc.yaml").write_text("stages:\n" + "".join(
        f"  {name}:\n    cmd: python talk.py\n    always_changed: true\n" for name in ("a", "b")))
    init_git_dvc(tmp_path)
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("tests.once")  # its own handler: importing Prefect reconfigures the root's
    logger.addFilter(StageWarningsOncePerRun())
    logger.addHandler(type("Keep", (logging.Handler,), {"emit": lambda self, record: records.append(record)})())
    logger.setLevel(logging.INFO)

    def flow_run(run_id: str) -> list[tuple[str, str]]:
        records.clear()
        adapter = PrefectLogAdapter(logger, {"flow_run_id": run_id})  # what get_run_logger() gives a task
        for stage in ("a", "b"):
            assert run_dvc_stage(stage, tmp_path, adapter, single=True)["ran"]
        adapter.warning("dvc is busy (held); retrying in 1 s")
        adapter.warning("dvc is busy (held); retrying in 1 s")
        return [(r.levelname, r.getMessage()) for r in records]

    gpu = ("WARNING", "no CUDA GPU available: running on the CPU")
    first = flow_run("run-1")
    assert first.count(gpu) == 1, first
    assert first.count(("INFO", "loaded the model")) == 2, first  # a stage's other lines, every time
    assert first.count(("WARNING", "dvc is busy (held); retrying in 1 s")) == 2, first  # the flow's own warnings
    assert flow_run("run-2").count(gpu) == 1  # the next run says it again


def test_a_run_that_cannot_reach_the_demo_branch_says_why_and_what_to_do(tmp_path):
    """`make demo` again after the README's `git switch main`: this run's dvc.lock is untracked on main and the demo
    branch holds its own, so git will not switch. The run is not recorded, nothing is changed, and the warning
    names the files and the way to record it (it used to say "(Aborting)", git's last line)."""
    import logging

    from brats_seg.orchestration.history import DEMO_BRANCH, record_run

    for args in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "t@example.com"],
                 ["git", "config", "user.name", "t"]):
        run_cmd(args, tmp_path)
    (tmp_path / "params.yaml").write_text("train: {epochs: 1}\n")
    run_cmd(["git", "add", "params.yaml"], tmp_path)
    run_cmd(["git", "commit", "-qm", "main"], tmp_path)
    (tmp_path / "dvc.lock").write_text("first run\n")
    assert record_run(tmp_path, "first run") is not None  # creates the branch, commits there
    run_cmd(["git", "switch", "-q", "main"], tmp_path)
    (tmp_path / "dvc.lock").write_text("second run\n")  # untracked on main
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("brats_seg.orchestration.history")
    handler = type("Keep", (logging.Handler,), {"emit": lambda self, record: records.append(record)})()
    logger.addHandler(handler)
    try:
        assert record_run(tmp_path, "second run") is None
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        f"the run is not recorded: git will not switch to branch {DEMO_BRANCH} because this run's dvc.lock would "
        f"overwrite or be overwritten by the branch's own; its outputs are here in the workspace: to record runs "
        f"there, `git stash -u` (or commit them here), `git switch {DEMO_BRANCH}`, and run again."]
    assert run_cmd(["git", "branch", "--show-current"], tmp_path).stdout.strip() == "main"
    assert (tmp_path / "dvc.lock").read_text() == "second run\n"
