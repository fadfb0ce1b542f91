"""The source stage under real DVC: download reruns when the source folder changed, and only then."""

from __future__ import annotations

import pytest

from brats_seg.data.layouts import list_canonical_cases
from tests.support.cohorts import write_synthetic_cohort
from tests.support.projects import make_dvc_project, run_cmd


@pytest.mark.slow
def test_dvc_reruns_download_only_when_the_source_folder_changed(tmp_path):
    src = tmp_path / "incoming"
    write_synthetic_cohort(src, 3)
    local = {"download": {"source": "local", "local": {"path": str(src)}}}
    write_params = make_dvc_project(tmp_path / "project", local)
    repo = write_params.path
    first = run_cmd(["dvc", "repro", "download"], repo).stdout
    assert "Running stage 'source'" in first and "Running stage 'download'" in first
    manifest = (repo / "data" / "source.json").read_bytes()

    again = run_cmd(["dvc", "repro", "download"], repo).stdout
    assert "Running stage 'source'" in again and "Running stage 'download'" not in again
    assert (repo / "data" / "source.json").read_bytes() == manifest

    write_synthetic_cohort(src, 4)  # one new case; the three others rewritten with the same bytes
    grown = run_cmd(["dvc", "repro", "download"], repo).stdout
    assert "Running stage 'download'" in grown
    assert len(list_canonical_cases(repo / "data" / "raw")) == 4

    write_params({"download": {"local": {"path": str(repo / "data" / "raw")}}})  # the pipeline's own output
    refused = run_cmd(["dvc", "repro", "download"], repo, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "download.local.path" in refused.stderr and "lies inside base.raw_dir" in refused.stderr
    assert len(list_canonical_cases(repo / "data" / "raw")) == 4  # refused before DVC removed anything
