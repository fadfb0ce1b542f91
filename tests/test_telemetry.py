"""No telemetry unless asked: however a user starts the project (a stage under `dvc repro`, `brats-seg`, a flow),
MLflow and Prefect are told not to phone home, and a choice the user made is kept."""

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
    require(activate.is_file() and "MLFLOW_DISABLE_TELEMETRY" in activate.read_text(),
            "the .venv's activate script has no telemetry defaults: run make setup")
    clean = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF}
    out = subprocess.run(["bash", "-c", f"source {activate} && echo $DO_NOT_TRACK $MLFLOW_DISABLE_TELEMETRY "
                                        "$PREFECT_SERVER_ANALYTICS_ENABLED"],
                         capture_output=True, text=True, env=clean, check=True).stdout.split()
    assert out == ["1", "true", "false"]
