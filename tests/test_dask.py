"""Per-case stages on a Dask cluster (a 2-worker LocalCluster) write byte for byte what this machine's process pool
writes, quarantine and fail the same way, and refuse workers that would compute something else."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import distributed
import pandas as pd
import pytest
import yaml

from brats_seg.base_params import BaseParams
from brats_seg.errors import ConfigError, UserError
from brats_seg.orchestration.executors import ENV_ADDRESS, LOCAL, Executor, choose_executor, run_parallel
from tests.support.cohorts import PROJECT_ROOT, write_synthetic_cohort
from tests.support.projects import make_dvc_project, run_cmd
from tests.support.services import free_port

CORRUPT = "BraTS20_Synthetic_003"  # its FLAIR file is cut in half: validation must quarantine it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A DVC project with tiny params, and a 2-worker LocalCluster whose workers run in the project's directory
    (as `dask worker` must be started: the stages' paths are relative to it). Yields (project, address)."""
    repo = make_dvc_project(tmp_path_factory.mktemp("dask") / "project").path
    here = os.getcwd()
    os.chdir(repo)  # worker processes start in the parent's working directory
    try:
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    finally:
        os.chdir(here)
    with local:
        yield repo, local.scheduler_address


def _ran_on(address: str) -> set[str]:
    """Names of the functions the cluster has run tasks of (the scheduler keeps one entry per task prefix)."""
    with distributed.Client(address, set_as_default=False) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def _outputs(run: Path) -> dict[str, str]:
    """sha256 of every output file of a validate + slice run under ``run/``, keyed by its path below ``run``."""
    files = [run / "reports/validation.json", run / "reports/validation/quarantine.csv",
             *sorted((run / "validated").rglob("*")), *sorted((run / "slices").rglob("*"))]
    return {f.relative_to(run).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def _write_params(repo: Path, tag: str, raw: str, executor: str, workers: int) -> str:
    """A params file for an in-process stage run whose outputs go under ``tag/`` (paths relative to ``repo``)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base"].update(raw_dir=raw, manifest=f"{tag}/validated/manifest.parquet", executor=executor,
                          validation_reports=f"{tag}/reports/validation", slices_dir=f"{tag}/slices",
                          validation_metrics=f"{tag}/reports/validation.json")
    params["validate"].update(workers=workers, max_bad_fraction=0.2)
    params["slice"]["workers"] = workers
    path = repo / f"params-{tag}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path.name


def _run_stage(name: str, params: str, capsys) -> tuple[int, str]:
    """Run ``stages.<name>`` in this process; returns its exit status and what it wrote to stderr."""
    module = __import__(f"stages.{name}", fromlist=["main"])
    capsys.readouterr()
    try:
        module.main(["--params", params])
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


@pytest.mark.slow
def test_validate_and_slice_on_dask_write_what_the_local_pool_writes(cluster, monkeypatch, capsys):
    repo, address = cluster
    monkeypatch.chdir(repo)
    write_synthetic_cohort(repo / "cohort", 6, tumour_free=(6,))
    flair = repo / "cohort" / CORRUPT / f"{CORRUPT}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    monkeypatch.setenv(ENV_ADDRESS, address)  # `local` must ignore it, `auto` must use it
    runs = {"local": _write_params(repo, "local", "cohort", "local", 2),
            "dask": _write_params(repo, "dask", "cohort", "auto", 2)}
    for tag, params in runs.items():
        for stage in ("validate", "slice"):
            assert _run_stage(stage, params, capsys)[0] == 0, f"{stage} failed on {tag}"
        if tag == "local":
            assert not {"inspect_case", "slice_case"} & _ran_on(address), "executor: local ran on the cluster"
    assert {"inspect_case", "slice_case"} <= _ran_on(address)

    local, remote = (_outputs(Path(tag)) for tag in runs)
    assert len(local) == 1 + 4 + 5 + 2  # manifest; index, cases, meta, output marker; five shards; metrics, quarantine
    assert sorted(remote) == sorted(local)
    assert [name for name in local if local[name] != remote[name]] == []
    manifests = [pd.read_parquet(f"{t}/validated/manifest.parquet") for t in runs]
    bad = [m.loc[m["status"] == "quarantined", ["case_id", "reasons"]].values.tolist() for m in manifests]
    assert bad[0] == bad[1] and [c for c, _ in bad[0]] == [CORRUPT]
    assert bad[0][0][1].startswith("unreadable file(s): flair (")


@pytest.mark.slow
def test_a_case_that_fails_to_slice_gives_the_same_one_sentence_either_way(cluster, monkeypatch, capsys):
    """A file broken after validation: slicing stops with the DataError sentence of the local run, no traceback."""
    repo, address = cluster
    monkeypatch.chdir(repo)
    write_synthetic_cohort(repo / "broken", 4)
    params = {"local": _write_params(repo, "broken-local", "broken", "local", 2)}
    assert _run_stage("validate", params["local"], capsys)[0] == 0
    shutil.copytree(repo / "broken-local" / "validated", repo / "broken-dask" / "validated")
    t1 = repo / "broken" / "BraTS20_Synthetic_002" / "BraTS20_Synthetic_002_t1.nii.gz"
    t1.write_bytes(b"not a NIfTI file")
    params["dask"] = _write_params(repo, "broken-dask", "broken", "dask", 2)
    text = (repo / params["dask"]).read_text().replace("dask_address: ''", f"dask_address: {address}")
    (repo / params["dask"]).write_text(text)
    monkeypatch.setenv(ENV_ADDRESS, "tcp://127.0.0.1:1")  # base.dask_address wins over the variable
    results = {tag: _run_stage("slice", p, capsys) for tag, p in params.items()}
    said = {tag: (status, [line for line in err.splitlines() if line.startswith("error: ")])
            for tag, (status, err) in results.items()}
    assert said["dask"] == said["local"]
    status, errors = said["dask"]
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith("error: broken/BraTS20_Synthetic_002/BraTS20_Synthetic_002_t1.nii.gz cannot be read "
                                "as NIfTI (")
    assert "Traceback" not in results["dask"][1]


@pytest.mark.slow
def test_dvc_repro_slice_on_dask_locks_the_same_slices(cluster):
    repo, address = cluster
    run_cmd(["dvc", "repro", "slice"], repo, timeout=600)
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    proc = run_cmd(["dvc", "repro", "--force", "--single-item", "slice"], repo, env={ENV_ADDRESS: address}, timeout=600)
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert "slice cases: 5 item(s) on the Dask cluster at " + address in proc.stdout + proc.stderr, proc.stderr
    outs = [{o["path"]: o["md5"] for o in lock["slice"]["outs"]} for lock in (before, after)]
    assert outs[0] == outs[1] and outs[0]["data/slices"].endswith(".dir")


def _item_1_fails_late(item: int) -> int:
    """Item 1 fails after a second; item 2 fails at once, so it fails first in time, but second in input order."""
    if item == 1:
        time.sleep(1.0)
    if item in (1, 2):
        raise ValueError(f"item {item} failed")
    return item


@pytest.mark.slow
def test_the_error_raised_is_the_first_failing_item_in_input_order_either_way(cluster, monkeypatch):
    repo, address = cluster
    monkeypatch.chdir(repo)
    for executor in (LOCAL, Executor(address, ENV_ADDRESS)):
        with pytest.raises(ValueError, match="^item 1 failed$"):
            run_parallel(_item_1_fails_late, [0, 1, 2, 3], workers=2, executor=executor)
    assert run_parallel(abs, [-3, 2, -1], executor=Executor(address, ENV_ADDRESS)) == [3, 2, 1]


@pytest.mark.slow
def test_a_worker_elsewhere_or_on_other_code_refuses_to_compute(cluster, tmp_path, monkeypatch):
    _, address = cluster
    monkeypatch.chdir(tmp_path)  # the cluster's workers run in the project directory, not here
    with pytest.raises(UserError, match=r"a Dask worker \(tcp://.*\) runs in .*project but the stage in "):
        run_parallel(abs, [-1, -2], executor=Executor(address, ENV_ADDRESS))
    src = tmp_path / "other" / "src"  # another checkout, one comment apart
    shutil.copytree(PROJECT_ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with open(src / "brats_seg" / "evaluation" / "metrics.py", "a") as fh:
        fh.write("\n# edited\n")
    with distributed.LocalCluster(n_workers=0, dashboard_address=":0") as other:
        worker = subprocess.Popen([str(Path(sys.executable).parent / "dask"), "worker", other.scheduler_address,
                                   "--nthreads", "1", "--no-dashboard"], cwd=tmp_path,
                                  env={**os.environ, "PYTHONPATH": str(src)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            with pytest.raises(UserError, match="runs other brats_seg code than the stage"):
                run_parallel(abs, [-1, -2], executor=Executor(other.scheduler_address, ENV_ADDRESS))
        finally:
            worker.terminate()
            worker.wait(timeout=30)


@pytest.mark.slow
def test_an_unreachable_scheduler_stops_the_stage_with_one_sentence(cluster, tmp_path):
    repo, _ = cluster
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base"].update(raw_dir="data/raw-unreachable", cache_dir=str(tmp_path / "cache"))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = run_cmd([sys.executable, "-m", "stages.download", "--params", str(tmp_path / "p.yaml")], repo, check=False,
                   env={ENV_ADDRESS: address, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: cannot reach the Dask scheduler at {address} (named by {ENV_ADDRESS}): ")
    assert "Traceback" not in proc.stderr and not (repo / "data/raw-unreachable").exists()


@pytest.mark.parametrize(("kind", "address", "env", "expected"), [
    ("auto", "", {}, LOCAL),
    ("auto", "", {ENV_ADDRESS: " tcp://a:1 "}, Executor("tcp://a:1", ENV_ADDRESS)),
    ("auto", "tcp://b:2", {ENV_ADDRESS: "tcp://a:1"}, Executor("tcp://b:2", "base.dask_address")),
    ("local", "", {ENV_ADDRESS: "tcp://a:1"}, LOCAL),
    ("local", "tcp://b:2", {}, LOCAL),
    ("dask", "", {ENV_ADDRESS: "tcp://a:1"}, Executor("tcp://a:1", ENV_ADDRESS)),
])
def test_choose_executor(kind, address, env, expected):
    assert choose_executor(kind, address, env) == expected


def test_executor_dask_without_an_address_is_one_sentence():
    with pytest.raises(UserError, match=r"^base.executor is dask but no scheduler is named; set base.dask_address or "
                                        r"DASK_SCHEDULER_ADDRESS"):
        choose_executor("dask", "", {ENV_ADDRESS: "  "})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("executor", "ray", "base.executor must be auto, local or dask, got 'ray'."),
    ("dask_address", "tcp://", "base.dask_address must be empty or a Dask scheduler address such as "
                               "tcp://10.0.0.5:8786, got 'tcp://'."),
    ("dask_address", "tcp://host:port", "got 'tcp://host:port'."),
])
def test_base_params_check_the_executor_keys(key, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        BaseParams(**{key: value})
    assert BaseParams(dask_address="tcp://[::1]:8786").dask_address == "tcp://[::1]:8786"
