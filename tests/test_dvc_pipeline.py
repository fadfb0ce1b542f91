"""A real `dvc repro` of the data stages in a temporary git repository on a tiny synthetic cohort."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import run_cmd

pytestmark = pytest.mark.slow


def test_repro_then_up_to_date_then_rerun_on_param_change(dvc_project):
    repo = dvc_project.path
    out = run_cmd(["dvc", "repro"], repo)
    for stage in ("download", "validate", "slice"):
        assert f"Running stage '{stage}'" in out.stdout
    metrics = json.loads((repo / "reports" / "validation.json").read_text())
    assert metrics["cases"] == 5 and metrics["ok"] == 5
    index = pd.read_parquet(repo / "data" / "slices" / "index.parquet")
    assert set(index["split"]) == {"train", "val", "test"}
    assert "dvc.lock" in {p.name for p in repo.iterdir()}

    status = run_cmd(["dvc", "status"], repo)
    assert "Data and pipelines are up to date." in status.stdout
    again = run_cmd(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout

    shown = json.loads(run_cmd(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert shown[""]["data"]["reports/validation.json"]["data"] == metrics

    # a slice-only parameter reruns slice, and nothing upstream
    dvc_project({"slice": {"size": 24}})
    changed = run_cmd(["dvc", "repro"], repo)
    assert "Running stage 'slice'" in changed.stdout
    assert "Running stage 'download'" not in changed.stdout and "Running stage 'validate'" not in changed.stdout
    # changing only the worker count changes nothing
    dvc_project({"slice": {"size": 24, "workers": 2}})
    assert "Data and pipelines are up to date." in run_cmd(["dvc", "status"], repo).stdout


def test_a_bad_param_stops_the_stage_with_one_sentence(dvc_project):
    dvc_project({"slice": {"sise": 64}})
    proc = run_cmd(["dvc", "repro", "download", "validate", "slice"], dvc_project.path, check=False)
    assert proc.returncode != 0
    assert "error: params.yaml: slice.sise is not a known key" in proc.stderr + proc.stdout
