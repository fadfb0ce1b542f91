"""The lifecycle the schedule exists for, end to end: a real `dvc repro` in a temporary git repository, real
Prefect flows (prefect_test_harness) and a real MLflow sqlite store, on a local folder of tiny synthetic cases.

cohort v1 (8 cases) -> the scheduled flow -> champion v1; two more cases arrive (25 %) -> the same flow reruns
download to register, every v1 patient keeps its split, the champion is re-scored on the new test split and
the decision is recorded on v2; the flow again with nothing new -> only the source check runs, no new version.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brats_seg.data.layouts import write_case
from brats_seg.data.synthetic import make_case
from brats_seg.evaluation.evaluate import evaluate_cases
from brats_seg.io.tables import read_json
from brats_seg.orchestration.driver import flow_stages
from brats_seg.registry import versions
from brats_seg.registry.lineage import case_lineage
from brats_seg.registry.resolve import resolve_model
from tests.support.cohorts import TINY_SHAPE
from tests.support.prefect_logs import logged
from tests.support.projects import make_dvc_project

pytestmark = pytest.mark.slow

# With base.seed 34 the hash split of cases 1-8 puts patients in all three splits (an empty one stops slice), and of
# the two new cases one lands in test and one in train: the new test split holds a patient v1 never saw.
SEED = 34


def _add_cases(folder: Path, first: int, last: int) -> list[str]:
    """Synthetic cases ``first``..``last`` (1-based, cohort seed 0) written into the source folder."""
    ids = []
    for i in range(first, last + 1):
        case = make_case(i, 0, TINY_SHAPE)
        write_case(folder, case.case_id, case.images, case.seg, case.affine)
        ids.append(case.case_id)
    return ids


def _splits(repo: Path) -> dict[str, str]:
    cases = pd.read_parquet(repo / "data" / "slices" / "cases.parquet")
    return dict(zip(cases["patient_id"], cases["split"]))


def _statuses(summary: dict) -> list[tuple[str, str]]:
    return [(r["stage"], r["status"]) for r in summary["stages"]]


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory, prefect_server):
    """(repo, source folder, [summary of each scheduled run], [split map after each run], what the first run
    logged to the Prefect server); the tests run in the workspace, whose own MLflow store the flows used."""
    from flows.serve import scheduled_pipeline

    root = tmp_path_factory.mktemp("lifecycle")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        incoming = root / "incoming"
        _add_cases(incoming, 1, 8)
        repo = make_dvc_project(root / "project", {
            "base": {"seed": SEED}, "download": {"source": "local", "local": {"path": str(incoming)}},
            "train": {"epochs": 1}, "promote": {"min_dice": 0.0, "min_improvement": 0.0}}).path
        summaries, splits = [], []
        began = datetime.now(timezone.utc)
        summaries.append(scheduled_pipeline(str(repo)))
        first_logs = logged(after=began, before=datetime.now(timezone.utc))  # its subflows' too (one worker)
        splits.append(_splits(repo))
        _add_cases(incoming, 9, 10)
        summaries.append(scheduled_pipeline(str(repo)))
        splits.append(_splits(repo))
        summaries.append(scheduled_pipeline(str(repo)))
        splits.append(_splits(repo))
        monkeypatch.chdir(repo)
        yield repo, incoming, summaries, splits, first_logs


def test_new_cases_retrain_keep_every_split_and_promote_like_with_like(lifecycle):
    repo, _, (first, second, third), (v1_splits, v2_splits, v3_splits), _ = lifecycle
    stages = flow_stages(repo)  # STAGES, then any stage dvc.yaml has gained since

    # cohort v1: every stage ran, version 1 registered as challenger (the registry's aliases before the promotion),
    # then promoted (no champion yet, floor 0)
    assert _statuses(first) == [("source", "checked")] + [(stage, "ran") for stage in stages[1:]]
    assert all(r["ran"] for r in first["stages"]) and all(r["seconds"] > 0 for r in first["stages"])
    assert first["model"]["name"] == "brats-unet" and first["model"]["version"] == "1"
    assert first["model"]["alias"] == "challenger" and first["model"]["aliases"] == ["challenger"]
    assert "dice_mean" in first["test"]["wt"] and first["promotion"]["promoted"]
    assert len(v1_splits) == 8 and set(v1_splits.values()) == {"train", "val", "test"}

    # two new cases: the source check saw them, download to register reran, version 2
    assert _statuses(second) == [("source", "checked")] + [(stage, "ran") for stage in stages[1:]]
    assert second["model"]["version"] == "2" and len(v2_splits) == 10
    assert {p: v2_splits[p] for p in v1_splits} == v1_splits  # no v1 patient moved
    new_test = sorted(p for p in v2_splits if p not in v1_splits and v2_splits[p] == "test")
    assert new_test, "the chosen seed must put a new patient into the test split"

    # the champion re-scored on v2's test patients, with the evaluate stage's code, and the decision recorded
    record = second["promotion"]
    meta = read_json(repo / "data" / "slices" / "meta.json")
    test_patients = sorted(p for p, s in v2_splits.items() if s == "test")
    champion = resolve_model("models:/brats-unet/1", "cpu")
    frame, _ = evaluate_cases(champion, repo / "data" / "slices", repo / "data" / "raw", "test")
    assert record["metric"] == "lesion_dice" and champion.regions == ("wt", "tc", "et")  # the default gate
    expected = float(np.mean([frame.loc[frame["region"] == r, "lesion_dice"].mean() for r in champion.regions]))
    summary = read_json(repo / "reports" / "eval.json")
    challenger = float(np.mean([summary[r]["lesion_dice_mean"] for r in champion.regions]))
    assert record["champion_rescored"] and record["previous_champion"] == "1"
    assert record["test_patients"] == len(test_patients) and record["test_split"] == meta["split_digest"]
    assert record["champion_dice"] == pytest.approx(expected, abs=1e-6)
    assert record["challenger_dice"] == pytest.approx(challenger, abs=1e-6)
    assert record["promoted"] == (challenger > expected)
    tags = versions.model_version("brats-unet", version="2")["tags"]
    assert tags["promotion_decision"] == ("promoted" if record["promoted"] else "kept")
    assert tags["promotion_test_patients"] == str(len(test_patients))
    assert tags["promotion_test_split"] == meta["split_digest"] and tags["promotion_champion_rescored"] == "true"
    assert tags["promotion_champion_dice"] == f"{record['champion_dice']:.6f}"
    assert tags["promotion_challenger_dice"] == f"{record['challenger_dice']:.6f}"
    assert versions.model_version("brats-unet", alias="champion")["version"] == ("2" if record["promoted"] else "1")

    # the run report decided the same before the promotion ran: champion v1 against v2 on v2's test patients
    page = (repo / "reports" / "index.html").read_text()
    shown = json.loads(re.search(r'<script type="application/json" id="gate-data">(.*?)</script>', page)[1])
    assert shown["decision"] == ("promote" if record["promoted"] else "keep") and shown["champion"] == "1"
    assert shown["champion_value"] == pytest.approx(record["champion_dice"], abs=1e-9)
    assert shown["challenger_value"] == pytest.approx(record["challenger_dice"], abs=1e-9)
    assert shown["test_patients"] == len(test_patients) and shown["champion_rescored"]
    own = pd.read_csv(repo / "reports" / "eval_cases.csv")
    for row in shown["patients"]:  # every test patient, each region's lesion-wise Dice of both versions
        for region in champion.regions:
            name = f"{region.upper()} lesion-wise Dice"
            theirs = frame[(frame["case_id"] == row["case_id"]) & (frame["region"] == region)]["lesion_dice"]
            mine = own[(own["case_id"] == row["case_id"]) & (own["region"] == region)]["lesion_dice"]
            assert row[f"{name} v1"] == pytest.approx(float(theirs.iloc[0]), abs=1e-9)
            assert row[f"{name} v2"] == pytest.approx(float(mine.iloc[0]), abs=1e-9)
    assert sorted(r["case_id"] for r in shown["patients"]) == sorted(frame["case_id"].unique())

    # the audit reads the splits back from the tracking store: a new test patient is in v2's test split only
    found = case_lineage(new_test[0])["found"]
    assert [(f["version"], f["split"]) for f in found] == [("2", "test")]
    old_train = next(p for p, s in v1_splits.items() if s == "train")
    assert [(f["version"], f["split"]) for f in case_lineage(old_train)["found"]] == [("1", "train"), ("2", "train")]

    # nothing new: the source check runs, every other stage is skipped, no new version
    assert _statuses(third) == [("source", "checked")] + [(stage, "skipped") for stage in stages[1:]]
    assert third["model"]["version"] == "2" and v3_splits == v2_splits
    assert [v["version"] for v in versions.model_versions("brats-unet")] == ["1", "2"]


def test_a_warning_each_stage_gives_for_itself_is_logged_once_per_run(lifecycle):
    """Train, evaluate and register each load a network in their own process and each say when there is no GPU:
    the first run's log (Prefect's UI; the console shows the same records) says it once, as the first stage said it."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: no stage warns")
    said = lifecycle[4]
    assert said.count("no CUDA GPU available: running on the CPU") == 1, said
    assert said.index("no CUDA GPU available: running on the CPU") > said.index("Running stage 'train':")
