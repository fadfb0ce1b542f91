"""The Prefect flows under prefect_test_harness, in a copy of a project on a tiny synthetic cohort that the pipeline
has run through (its first run, from scratch, is tests/test_lifecycle.py's): a run that checks the source and skips
everything else, the workspace lock (one sentence, no traceback), promotion, lineage, the served schedule."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import yaml

from brats_seg.cli import main as cli
from brats_seg.errors import UserError
from brats_seg.orchestration.driver import STAGES, flow_stages, workspace_lock
from tests.support.cohorts import PROJECT_ROOT
from tests.support.prefect_logs import logged
from tests.support.projects import make_dvc_project, reproduced_copy, run_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ran(tmp_path_factory, prefect_server):
    """The pipeline flow in a copy of the run's reproduced project (tests/support/projects.py): (repo, the run's
    summary). The flow's first run, every stage run, is tests/test_lifecycle.py's."""
    from flows.pipeline import pipeline

    repo, _ = reproduced_copy(tmp_path_factory.mktemp("flows") / "project")
    return repo, pipeline(str(repo))


def test_a_deployed_run_logs_its_summary_and_a_command_line_run_leaves_it_to_its_printout(ran):
    """Prefect's UI shows a scheduled run's logs only: they end with the stages and the model. `python -m
    flows.pipeline` and `make demo` print the summary themselves (log_summary=False), so it is not said twice."""
    from flows.pipeline import pipeline

    repo = ran[0]
    said = logged(pipeline(str(repo), stages=["source"], return_state=True))
    assert "checked: source; ran: none; skipped: none" in said and "model brats-unet v1 @challenger" in said
    quiet = logged(pipeline(str(repo), stages=["source"], log_summary=False, return_state=True))
    assert not [m for m in quiet if m.startswith(("checked:", "model "))], quiet
    assert "Running stage 'source':" in quiet  # the stage's own lines are still logged


def test_after_a_run_the_flow_checks_the_source_and_skips_every_other_stage(ran):
    repo, summary = ran
    assert list(STAGES) == ["source", "download", "validate", "slice", "train", "evaluate", "register", "report"]
    stages = flow_stages(repo)  # STAGES, then any stage dvc.yaml has gained since
    assert [(r["stage"], r["status"]) for r in summary["stages"]] == [("source", "checked")] + [
        (stage, "skipped") for stage in stages[1:]]
    assert summary["model"]["name"] == "brats-unet" and summary["model"]["version"] == "1"  # no new version
    assert summary["model"]["aliases"] == ["challenger"] and "dice_mean" in summary["test"]["wt"]


def test_a_second_concurrent_run_fails_clearly_and_leaves_dvc_usable(ran):
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import pipeline

    repo = ran[0]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(repo / "src")}
    with workspace_lock(repo):
        with pytest.raises(UserError, match="another pipeline run .* is driving dvc in .*wait for it to finish"):
            pipeline(str(repo))
        proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--workdir", "."], cwd=repo, env=env,
                              capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert proc.stderr.splitlines()[-1].startswith(f"error: another pipeline run (pid {os.getpid()} since ")
    assert proc.stderr.splitlines()[-1].endswith("wait for it to finish, or stop it, then retry.")
    assert len(output.splitlines()) <= 5, output  # began, the sentence, finished Failed('the sentence'), error:
    status = run_cmd(["dvc", "status"], repo).stdout
    assert status.split() == ["source:", "always", "changed"], status  # the source check runs every time


class _ReleaseWhenWaiting(logging.Handler):
    """Lets a held dvc lock go when the flow logs that dvc is busy (``emit(None)``: at once, e.g. in a finally)."""

    def __init__(self, lock) -> None:
        super().__init__(logging.WARNING)
        self.dvc_lock, self.released_on_warning, self.open = lock, False, True

    def emit(self, record: logging.LogRecord | None) -> None:
        if record is not None and not record.getMessage().startswith("dvc is busy"):
            return
        if self.open:
            self.released_on_warning, self.open = record is not None, False
            self.dvc_lock.close()


def _hold_dvc_lock(repo):
    """Hold dvc's own repository lock as a running `dvc` process does (zc.lockfile on .dvc/tmp/lock); returns it."""
    import zc.lockfile

    return zc.lockfile.LockFile(str(repo / ".dvc" / "tmp" / "lock"))


def test_a_run_that_finds_dvc_busy_waits_for_it_or_gives_up_with_one_sentence(ran):
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import pipeline

    repo = ran[0]
    lock = _hold_dvc_lock(repo)
    try:
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(repo / "src")}
        proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--workdir", ".", "--dvc-wait-s", "1"],
                              cwd=repo, env=env, capture_output=True, text=True)
    finally:
        lock.close()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output
    assert proc.stderr.splitlines()[-1] == (
        f"error: dvc is busy in {repo.resolve()}: another dvc process (a manual `dvc repro`?) holds its lock and "
        f"held it for all of the 1 s this run waits; let it finish, then rerun, or let the run wait longer "
        f"(--dvc-wait-s, flow parameter dvc_wait_s).")

    # a manual dvc command that finishes while the flow waits: it lets go once the flow says it is waiting (not
    # after a fixed time, which a loaded machine's slow flow start could outlast)
    lock = _hold_dvc_lock(repo)
    release = _ReleaseWhenWaiting(lock)
    task_logger = logging.getLogger("prefect.task_runs")
    task_logger.addHandler(release)
    try:
        summary = pipeline(str(repo), dvc_wait_s=60)
    finally:
        task_logger.removeHandler(release)
        release.emit(None)
    assert release.released_on_warning
    source = summary["stages"][0]
    assert source["stage"] == "source" and source["status"] == "checked" and source["waited_s"] >= 1
    assert [r["status"] for r in summary["stages"][1:]] == ["skipped"] * (len(flow_stages(repo)) - 1)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stdout) of the brats-seg command line."""
    try:
        cli(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().out


def test_promotion_then_lineage_verifies_and_detects_drift(ran, capsys, monkeypatch):
    from flows.promote import promote_flow

    repo = ran[0]
    record = promote_flow(str(repo))
    assert record["promoted"] and record["version"] == "1"
    from brats_seg.reporting.summary import pipeline_summary

    assert pipeline_summary(repo, [])["model"]["aliases"] == ["challenger", "champion"]  # not registration's view
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out = _cli(["lineage", "models:/brats-unet@champion", "--verify"], capsys)
    head = run_cmd(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert code == 0, out
    assert "brats-unet v1" in out and head in out and lock["download"]["outs"][0]["md5"] in out
    assert "workspace matches" in out and "train.epochs=6" in out and "test_wt_dice_mean=" in out
    # what it was trained under, kept with the run whatever git holds, and its promotion on the audit trail
    assert ("inputs   params.yaml and dvc.lock as training began (whatever git holds): run artifacts "
            "inputs/params.yaml, inputs/dvc.lock") in out
    run_id = next(line.split()[1] for line in out.splitlines() if line.startswith("run "))
    import mlflow

    kept = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="inputs/params.yaml",
                                               tracking_uri=f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    assert yaml.safe_load(open(kept).read()) == yaml.safe_load((repo / "params.yaml").read_text())
    assert [line.split()[2] for line in out.splitlines() if line.startswith("decision ")] == ["promoted"]

    victim = next((repo / "data" / "raw").glob("*/*_flair.nii.gz"))
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes() + b"tampered")
    code, out = _cli(["lineage", "models:/brats-unet@champion", "--verify"], capsys)
    assert code == 1 and "DRIFT    data/raw: the workspace files are modified" in out
    subprocess.run(["dvc", "checkout", "--force", "data/raw"], cwd=repo, check=True, capture_output=True)
    assert _cli(["lineage", "models:/brats-unet@champion", "--verify"], capsys)[0] == 0

    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["train"]["lr"], params["train"]["memory_gb"] = 0.5, 2  # memory_gb does not shape the model (runtime)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    code, out = _cli(["lineage", "models:/brats-unet@champion", "--verify"], capsys)
    (repo / "params.yaml").write_text(original)
    assert code == 1 and out.count("DRIFT") == 1
    assert "DRIFT    params.yaml train.lr: the model was trained with 0.003, params.yaml now says 0.5" in out

    from brats_seg.registry.lineage import lineage, verify

    chain = lineage("models:/brats-unet@champion")
    edited = next(f for f in chain["code"]["files"] if f.endswith("losses.py"))
    chain["code"]["files"][edited] = "0" * 16
    assert verify(chain, params | {"train": yaml.safe_load(original)["train"]}, repo) == \
        [f"{edited}: edited since the model was trained"]


def test_the_served_deployment_carries_the_schedule_from_params(ran):
    from flows.serve import build_deployment

    repo = ran[0]
    deployment = build_deployment(str(repo))
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
    assert deployment.parameters["workdir"] == str(repo.resolve())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["schedule"]["cron"] = "30 1 * * *"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert [s.schedule.cron for s in build_deployment(str(repo)).schedules] == ["30 1 * * *"]


@pytest.mark.usefixtures("prefect_home")  # migrated already: the server stopped after 1 s leaves none half done
def test_a_temporary_server_that_starts_too_slowly_is_one_sentence(tmp_path):
    """The flow on a machine too busy for Prefect's temporary server: its start-up limit (prefect.toml, here
    lowered to 1 s through the environment as an artificially slow start) runs out, and the command says so in
    one sentence with what to do, exit 2, no traceback."""
    repo = make_dvc_project(tmp_path / "project").path
    settings = (repo / "prefect.toml").read_text()
    assert "analytics_enabled = false" in settings and "startup_timeout_seconds = 120" in settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
               PYTHONPATH=str(repo / "src") + os.pathsep + str(repo))
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: Prefect's temporary API server did not start within 1 s (a busy machine): run the "
                      "command again, raise server.ephemeral.startup_timeout_seconds in prefect.toml, or start a "
                      "server once (prefect server start) and set PREFECT_API_URL=http://127.0.0.1:4200/api."]
    assert "Traceback" not in proc.stderr and not (repo / "data" / "raw").exists()
    # Prefect's notice of its temporary server is one line with one timestamp, without a second untimed line
    output = proc.stdout + proc.stderr
    assert "Starting temporary server on http://127.0.0.1:" in output and "See https://www.prefect.io" not in output


def test_prefect_reads_the_projects_settings_from_its_folder(tmp_path):
    """Every Prefect entry point run from the project folder (a flow, `prefect server start`, `prefect deployment
    run`) reads prefect.toml: telemetry off and the longer start-up limit, with no environment variable set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DO_NOT_TRACK"))}
    code = ("from prefect.settings import get_current_settings as s; "
            "print(s().server.analytics_enabled, s().server.ephemeral.startup_timeout_seconds)")
    inside = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert inside.stdout.split() == ["False", "120"], inside.stderr
    assert elsewhere.stdout.split() == ["True", "20"], elsewhere.stderr  # Prefect's own defaults: the file matters


@pytest.mark.parametrize("champion, dice",
                         [(None, 0.81), (None, 0.2), ({"version": "1"}, 0.9), ({"version": "1"}, 0.7)])
def test_the_promotion_line_says_each_number_and_the_split_once(champion, dice):
    """flows.promote.describe on the gate's own decisions (promotion.judge): promoted with no champion, below the
    floor, better and not better than a champion. Every score, the split and the champion's absence appear once,
    whether the reason or the tail says them."""
    import re

    from brats_seg.registry.comparison import Comparison
    from brats_seg.registry.params import PromoteParams
    from brats_seg.registry.promotion import _record, judge
    from flows.promote import describe

    comparison = None if champion is None else Comparison(0.8, 6, "f617bdb2a7ba0123", rescored=False)
    decision = judge(dice, champion, comparison, PromoteParams(min_dice=0.5), "mean lesion-wise Dice", "lesion")
    line = describe("brats-unet", _record("brats-unet", "2", decision))
    numbers = re.findall(r"\d\.\d{4}", line)
    assert sorted(numbers) == sorted({f"{dice:.4f}", *([] if champion is None else ["0.8000"])}), line
    assert line.count("f617bdb2a7ba") == (0 if champion is None else 1) and "None" not in line, line
    assert line.count("no champion") == (champion is None) and line.count("champion v1") == (champion is not None), line


def test_the_demo_and_the_flow_say_each_stage_the_same_way():
    """`make demo`'s closing lines and `python -m flows.pipeline`'s printout: one stages line, word for word."""
    from flows.demo import report
    from flows.pipeline import summary_lines

    stages = [{"stage": "source", "status": "checked", "seconds": 1.2},
              {"stage": "train", "status": "ran", "seconds": 34.6}, {"stage": "report", "status": "skipped",
                                                                     "seconds": 0.4}]
    prediction = {"case_id": "BraTS20_Synthetic_001", "mask": "predictions/BraTS20_Synthetic_001.nii.gz",
                  "volumes_ml": {"wt": 0.6}, "model": "brats-unet v1", "cohort": "3 synthetic cases", "warning": None}
    demo = report({"stages": stages, "promotion": {"promoted": False, "reason": "below the floor"},
                   "prediction": prediction}).splitlines()
    flow = summary_lines({"stages": stages}).splitlines()
    said = "stages: source checked (1 s), train ran (35 s), report skipped (0 s)"
    assert [line for line in demo if line.startswith("stages:")] == [said] == flow[:1]
