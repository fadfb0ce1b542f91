"""No telemetry unless asked: however a user starts the project (a stage under `dvc repro`, `brats-seg`, a flow,
`dvc` in the activated environment), MLflow, Prefect and DVC are told not to phone home, and a choice the user
made is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from brats_seg import TELEMETRY_OFF
from tests.support.cohorts import PROJECT_ROOT
from tests.support.projects import require

# MLflow counts any of these as CI or a test run and sends nothing then: a user's shell has none of them
CI_MARKERS = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TRAVIS")
CHECK = ("import sys, os{imports}\nfrom mlflow.telemetry.utils import is_telemetry_disabled\n"
         "print(is_telemetry_disabled(), os.environ.get('PREFECT_SERVER_ANALYTICS_ENABLED'))")


def _run(imports: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in (*TELEMETRY_OFF, *CI_MARKERS)}
    code = CHECK.format(imports="".join(f"\nimport {name}" for name in imports.split()))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
                          env={**clean, "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{PROJECT_ROOT}", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_mlflow_alone_would_send_telemetry_from_a_users_shell():
    """The baseline the project must change: MLflow by itself is on (so the next test can fail)."""
    assert _run("") == "False None"


@pytest.mark.parametrize("entry", ["stages.train", "stages.register", "brats_seg.cli", "flows.pipeline"])
def test_every_entry_point_turns_it_off(entry):
    assert _run(entry) == "True false"


def test_a_user_who_turns_it_on_keeps_it_on():
    assert _run("stages.train", MLFLOW_DISABLE_TELEMETRY="false", PREFECT_SERVER_ANALYTICS_ENABLED="true") == \
        "False true"


def test_the_activated_environment_turns_it_off_for_commands_started_by_hand():
    """`mlflow ui` or `prefect server start` in a shell after `source .venv/bin/activate` (make setup adds this)."""
    activate = PROJECT_ROOT / ".venv" / "bin" / "activate"
    require(activate.is_file() and "DVC_NO_ANALYTICS" in activate.read_text(),
            "the .venv's activate script has no telemetry defaults: run make setup")
    clean = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF}
    clean.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None)
    out = subprocess.run(["bash", "-c", f"source {activate} && echo $DO_NOT_TRACK $MLFLOW_DISABLE_TELEMETRY "
                                        "$PREFECT_SERVER_ANALYTICS_ENABLED $DVC_NO_ANALYTICS "
                                        "$MLFLOW_SERVER_ENABLE_JOB_EXECUTION"],
                         capture_output=True, text=True, env=clean, check=True).stdout.split()
    assert out == ["1", "true", "false", "1", "false"]  # and mlflow ui's job runner off (no GenAI jobs here)


def _dvc_init_analytics(tmp_path, env: dict[str, str]) -> str:
    """What `dvc init -v` in a new git repository says of its analytics ("enabled" or "disabled"). DVC's report
    would go to DVC_ANALYTICS_ENDPOINT: here a closed port on 127.0.0.1, so even the baseline sends nothing out."""
    repo = tmp_path / f"repo{len(list(tmp_path.iterdir()))}"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    clean = {k: v for k, v in os.environ.items() if k not in (*TELEMETRY_OFF, "DVC_TEST")}
    proc = subprocess.run(["dvc", "init", "-v"], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**clean, "DVC_ANALYTICS_ENDPOINT": "http://127.0.0.1:9/", "TMPDIR": str(tmp_path),
                               **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = {word for word in ("enabled", "disabled") if f"Analytics is {word}." in proc.stdout + proc.stderr}
    assert len(said) == 1, proc.stdout + proc.stderr
    return said.pop()


def test_dvc_init_of_a_new_repository_reports_unless_told_not_to_and_the_project_tells_it(tmp_path):
    """A new repository has no `core.analytics false` yet, and DVC ignores DO_NOT_TRACK: only DVC_NO_ANALYTICS
    (in TELEMETRY_OFF, so in every process the project starts, in the Makefile and in the activated .venv) keeps
    `dvc init` from reporting. The tests' and the benchmark's scratch repositories are made so."""
    assert _dvc_init_analytics(tmp_path, {"DO_NOT_TRACK": "1"}) == "enabled"  # the baseline: this test can fail
    assert _dvc_init_analytics(tmp_path, TELEMETRY_OFF) == "disabled"
