"""A real `dvc repro` of the data stages in a temporary git repository on a tiny synthetic cohort."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from tests.support.projects import REPRODUCED, reproduced_copy, run_cmd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A copy of the run's reproduced project (tests/support/projects.py: a whole `dvc repro` on tiny params, 6
    epochs) with its results committed, shared by the tests below that read it (each proves something of that first
    run) or clone it (a second clean run to compare with): the repository, and the first `dvc repro`'s output."""
    repo, first = reproduced_copy(tmp_path_factory.mktemp("reproduced") / "project")
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "reproduced"], repo)
    return repo, first


def _ran(stdout: str) -> list[str]:
    """The stages a `dvc repro` ran, in order."""
    return re.findall(r"Running stage '([\w-]+)'", stdout)


def _changed_stages(repo, *targets: str) -> list[str]:
    """The stages `dvc status` reports as changed (of ``targets`` and the stages upstream of them, if given)."""
    status = json.loads(run_cmd(["dvc", "status", "--json", *(["--with-deps", *targets] if targets else [])],
                                repo).stdout or "{}")
    return sorted(status)


def _set_params(repo, section: str, **values) -> None:
    """params.yaml with ``values`` set in ``section``, as a user edits it."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_after_a_repro_up_to_date_then_a_param_change_reruns_only_its_stage(tmp_path):
    """Through the data stages (the whole pipeline's second run skipping every stage is tests/test_flows.py's, and
    tests/test_readme.py runs `dvc repro` twice): what reruns is what DVC's locks and params say, no more."""
    repo, _ = reproduced_copy(tmp_path / "project")
    metrics = json.loads((repo / "reports" / "validation.json").read_text())
    assert metrics["cases"] == 5 and metrics["ok"] == 5
    index = pd.read_parquet(repo / "data" / "slices" / "index.parquet")
    assert set(index["split"]) == {"train", "val", "test"}

    assert _changed_stages(repo, "slice") == ["source"]  # only the always-run check of the data source
    again = run_cmd(["dvc", "repro", "slice"], repo)
    assert _ran(again.stdout) == ["source"]  # it found the source unchanged: nothing else ran

    shown = json.loads(run_cmd(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert shown[""]["data"]["reports/validation.json"]["data"] == metrics

    # a slice-only parameter reruns slice, and nothing upstream
    _set_params(repo, "slice", size=24)
    changed = run_cmd(["dvc", "repro", "slice"], repo)
    assert _ran(changed.stdout) == ["source", "slice"]
    # changing only the worker count changes nothing
    _set_params(repo, "slice", workers=2)
    assert _changed_stages(repo, "slice") == ["source"]


def test_a_bad_param_stops_dvc_repro_in_its_first_stage_with_one_sentence_and_no_output_lost(tmp_path):
    """The source stage, which every `dvc repro` runs first, checks the whole params.yaml: a mistyped key, which
    changes no value DVC tracks (each stage lists the keys it reads) so that every stage is up to date, and a bad
    value of a key train reads, said before DVC removes the model to retrain it."""
    repo, _ = reproduced_copy(tmp_path / "project")
    model = _md5(repo / "models" / "unet.pt")
    _set_params(repo, "slice", sise=64)
    assert _changed_stages(repo) == ["source"]  # DVC itself sees nothing to rerun but the always-run source check
    proc = run_cmd(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0 and _ran(proc.stdout) == ["source"]
    assert "error: params.yaml: slice.sise is not a known key" in proc.stderr + proc.stdout

    (repo / "params.yaml").write_text(run_cmd(["git", "show", "HEAD:params.yaml"], repo).stdout)
    _set_params(repo, "train", epochs=-1)
    assert "train" in _changed_stages(repo)
    proc = run_cmd(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0 and _ran(proc.stdout) == ["source"]
    assert "error: params.yaml: train.epochs must be an integer >= 1, got -1." in proc.stderr + proc.stdout
    assert _md5(repo / "models" / "unet.pt") == model


def test_a_whole_repro_tracks_the_run_in_mlflow(reproduced, monkeypatch):
    repo, first = reproduced
    assert _ran(first) == ["source", "download", "validate", "slice", "train", "evaluate", "register", "report"]
    report = json.loads((repo / "reports" / "eval.json").read_text())
    assert report["n_cases"] >= 1 and 0.0 <= report["wt"]["dice_mean"] <= 1.0
    cases = pd.read_csv(repo / "reports" / "eval_cases.csv")
    assert set(cases.columns) >= {"case_id", "dice", "iou", "precision", "recall", "hd95"}
    # dvc plots draws one bar per row it labels: one label per case and region, so no region's Dice is stacked
    assert cases["case_region"].is_unique and len(cases) == report["n_cases"] * 3
    assert (cases["case_region"] == cases["case_id"] + " " + cases["region"].str.upper()).all()
    metrics = json.loads((repo / "reports" / "eval_metrics.json").read_text())  # the headline DVC metric
    assert metrics["wt"] == {"dice": report["wt"]["dice_mean"], "lesion_dice": report["wt"]["lesion_dice_mean"]}
    assert {p.name for p in (repo / "reports" / "overlays").iterdir()} == {"best.png", "median.png", "worst.png",
                                                                          ".brats-seg-output"}
    train = _train(repo)
    _assert_numbers_only(repo)

    import yaml

    from brats_seg.registry import tracking, versions

    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tracking.get_run(train["run_id"])
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    head = run_cmd(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()  # the commit it ran on, before the fixture's
    assert run["tags"]["git_commit"] == head and run["tags"]["git_dirty"] in ("true", "false")
    assert run["tags"]["dvc_raw_md5"] == lock["download"]["outs"][0]["md5"]
    assert run["tags"]["dvc_slices_md5"] == lock["slice"]["outs"][0]["md5"]
    assert run["tags"]["slice_index_digest"][:36] in run["inputs"] and len(run["inputs"]) == 4  # + 3 split tables
    splits = versions.split_tables(train["run_id"]).sort_values("case_id", ignore_index=True)
    cases = pd.read_parquet(repo / "data" / "slices" / "cases.parquet", columns=list(splits.columns))
    assert splits.equals(cases.sort_values("case_id", ignore_index=True).astype(str))
    epochs = REPRODUCED["train"]["epochs"]
    assert [step for step, _ in tracking.metric_history(train["run_id"], "val_dice")] == list(range(1, epochs + 1))
    assert run["params"]["train.lr"] == "0.003" and run["params"]["slice.size"] == "32"
    assert run["metrics"]["test_wt_dice_mean"] == pytest.approx(report["wt"]["dice_mean"])
    artifacts = {p.name for p in (repo / "mlflow" / "artifacts").rglob("*") if p.is_file()}
    assert {"train_curve.png", "train_curve.csv", "eval.json", "model_config.json", "best.png"} <= artifacts

    again = run_cmd(["dvc", "repro", "evaluate"], repo)
    assert _ran(again.stdout) == ["source"]
    assert not list((repo / "data" / "cache" / "checkpoints").glob("*.pt"))  # a finished run leaves none


def _train(repo) -> dict:
    """What the train stage reported: its metrics (train.json) and its run's identifiers (train_run.json)."""
    return {**json.loads((repo / "reports" / "train.json").read_text()),
            **json.loads((repo / "reports" / "train_run.json").read_text())}


def _assert_numbers_only(repo) -> None:
    """Every DVC metrics file of dvc.yaml holds numbers only (what `dvc metrics diff` and `dvc exp show` can
    compare); identifiers such as run ids live in MLflow and in files that are not metrics."""
    import yaml

    base = yaml.safe_load((repo / "params.yaml").read_text())["base"]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = [re.sub(r"\$\{base\.(\w+)\}", lambda m: base[m[1]], next(iter(o)) if isinstance(o, dict) else o)
             for s in stages.values() for o in s.get("metrics", [])]
    assert len(paths) == 3, paths  # validation, train, evaluate

    def leaves(value):
        return [x for v in value.values() for x in leaves(v)] if isinstance(value, dict) else [value]

    for path in paths:
        values = leaves(json.loads((repo / path).read_text()))
        strays = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        assert values and not strays, f"{path} holds non-numbers: {strays}"


def _md5(path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _cached_out_hashes(repo) -> dict[str, str]:
    """``{path: md5}`` of every output dvc.lock records that dvc.yaml caches (``cache: false`` ones left out)."""
    import yaml

    base = yaml.safe_load((repo / "params.yaml").read_text())["base"]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    uncached = {re.sub(r"\$\{base\.(\w+)\}", lambda m: base[m[1]], next(iter(o)))
                for s in stages.values() for kind in ("outs", "metrics", "plots") for o in s.get(kind, [])
                if isinstance(o, dict)}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", []) if o["path"] not in uncached}


def test_two_clean_runs_hash_the_same_and_a_shorter_experiment_trains_its_own_epochs(reproduced, tmp_path):
    """Byte-reproducible cached outputs on CPU: a clone of the reproduced project (its outputs stay behind: git
    ignores them), sharing its DVC cache, runs every stage up to train again (`--force --no-run-cache`: none
    checked out or restored from the cache); then `dvc exp run -S train.epochs=1` after that 6-epoch run."""
    origin = reproduced[0]
    upstream = {"data/raw", "data/validated/manifest.parquet", "data/slices", "models/unet.pt"}  # train and before
    first = _cached_out_hashes(origin)
    assert set(first) == upstream | {"reports/overlays", "reports/index.html"}  # evaluate's and report's: not rerun
    longer = _train(origin)
    repo = tmp_path / "clone"
    run_cmd(["git", "clone", "-q", str(origin), str(repo)], tmp_path)
    (repo / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {origin / '.dvc' / 'cache'}\n")
    assert not (repo / "data" / "raw").exists() and not (repo / "models" / "unet.pt").exists()

    again_run = run_cmd(["dvc", "repro", "--force", "--no-run-cache", "train"], repo)
    assert _ran(again_run.stdout) == ["source", "download", "validate", "slice", "train"]
    assert _cached_out_hashes(repo) == first  # dvc.lock: train and every stage before it wrote the same bytes
    assert {path: _md5(repo / path) for path in ("models/unet.pt", "data/validated/manifest.parquet")} == {
        path: _md5(origin / path) for path in ("models/unet.pt", "data/validated/manifest.parquet")}
    again = _train(repo)
    assert again["run_id"] != longer["run_id"] and again["fingerprint"] == longer["fingerprint"]
    run_cmd(["git", "commit", "-qam", "6 epochs, again"], repo)

    run_cmd(["dvc", "exp", "run", "-S", "train.epochs=1", "train"], repo)
    shorter = _train(repo)
    assert shorter["epochs"] == 1 and shorter["run_id"] != longer["run_id"]
    assert shorter["fingerprint"] != longer["fingerprint"]
    assert _cached_out_hashes(repo)["models/unet.pt"] != first["models/unet.pt"]


def test_data_drift_on_a_branch_where_the_pipeline_never_ran_says_so_in_words(dvc_project):
    """`lineage --verify` on a branch without dvc.lock (e.g. main after the demo): no Python None in the sentence."""
    from brats_seg.base_params import BaseParams
    from brats_seg.registry.lineage import _data_drift

    chain = {"data": {"raw_md5": "b33c0ffee.dir", "slices_md5": None}}
    drift = _data_drift(chain, BaseParams(), dvc_project.path)
    assert drift[0] == ("data/raw: the model was trained on md5 b33c0ffee.dir, dvc.lock records none (the pipeline "
                        "has not run on this branch: its data is not this model's)")
    assert not any("None" in line for line in drift), drift
