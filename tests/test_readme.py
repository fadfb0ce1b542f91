"""Every command the README shows works as written, from a shell whose PATH has no virtual environment.

The README's commands are run in order in a copy of the project through which the pipeline has run once (tiny
params, so that the slow ones take seconds), after `source .venv/bin/activate` as the README says, beginning with
the demo's flow; a command the README shows again (the pipeline and the promotion, in three sections) runs once,
where it first appears. A command the test cannot run here must be listed in EXEMPT with the reason; a new README
command that is neither run nor exempt fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.cohorts import PROJECT_ROOT
from tests.support.projects import bash_commands, reproduced_copy, run_cmd

pytestmark = pytest.mark.slow

FULL_SIZE = ("brats-seg params set download.synthetic.n_cases=24 'slice.split=[0.7,0.15,0.15]' slice.size=128 "
             "train.base=32 train.depth=4 train.batch_size=32 train.epochs=20")
EXEMPT = {
    "make demo": "run here as `python -m flows.demo` on tiny params, after the pipeline's first run (below); the "
                 "new-user walk-through runs it whole, tests/test_lifecycle.py the flow from scratch",
    "make test": "this test suite",
    "python benchmarks/real_accuracy.py --threads 1": "a benchmark, not a test: 4 folds of training on the real "
                                                       "cases, about 35 minutes (its numbers are quoted beside it)",
    "source .venv/bin/activate": "the convention itself: every command here runs after it",
    FULL_SIZE: "full-size training needs a GPU; these are the committed params.yaml values (test below)",
    "dvc exp run -S download.source=local -S download.local.path=/path/to/MICCAI_BraTS2020_TrainingData":
        "the user's own data; local sources are tested in tests/data/test_download.py",
    "brats-seg params set download.source=local download.local.path=/path/to/incoming":
        "the user's own folder; tests/test_lifecycle.py runs this life cycle on a local folder of cases",
    "dvc exp run -S download.source=kaggle": "needs Kaggle credentials and the network; tested against a local server",
    "dvc exp run -S download.source=url": "a 7 GB download; the url source is tested against a local server",
    "python -m flows.serve": "serves until stopped; its deployment is built and checked in tests/test_flows.py",
    "dask scheduler --port 8786": "a cluster of hosts; tests/test_dask.py runs the stages on a 2-worker LocalCluster",
    "dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1": "tests/test_dask.py (LocalCluster)",
    "DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786 dvc repro": "tests/test_dask.py (dvc repro slice with the variable)",
    "dvc exp run -S train.nproc=2": "2 GPUs for the committed full-size params; tests/test_scale.py runs `dvc repro` "
                                    "with train.nproc: 2 (torchrun, 2 gloo processes) on tiny params",
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 -m stages.train":
        "two 8-GPU hosts; tests/test_scale.py runs torchrun with 2 gloo processes on one host",
    # Team mode: each runs against real servers on 127.0.0.1 in the team tests
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000": "tests/test_team_mlflow.py (PostgreSQL + mlflow server)",
    "dvc remote add -d team /mnt/team/dvc/brats-seg": "tests/test_team_dvc_remote.py (folder remote and S3 via moto)",
    "dvc push": "tests/test_team_dvc_remote.py",
    "prefect work-pool create brats-seg --type process": "tests/test_team_prefect.py (server and worker)",
    "prefect --no-prompt deploy --all": "tests/test_team_prefect.py",
    "prefect worker start --pool brats-seg": "tests/test_team_prefect.py (with --run-once)",
    "prefect server start": "tests/test_team_prefect.py starts it (on a free port of 127.0.0.1)",
    "export PREFECT_API_URL=http://127.0.0.1:4200/api": "tests/test_team_prefect.py (that server's address)",
    "prefect deployment run 'brats-seg-scheduled/pool-weekly'": "tests/test_team_prefect.py (the run completes)",
}
LONG_RUNNING = {"mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --host 127.0.0.1 --workers 1":
                    "http://127.0.0.1:5000"}
MAY_EXIT_1 = {"brats-seg lineage models:/brats-unet@champion --verify"}  # exit 1 is its answer "drifted"


def readme_commands(text: str) -> list[str]:
    """Command lines of the README's ```bash blocks, comments stripped."""
    return bash_commands(text)


def _shell(command: str, repo: Path, timeout: float = 600, columns: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PYTHONPATH")}
    if columns:
        env["COLUMNS"] = str(columns)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env["PYTHONPATH"] = str(repo / "src")  # the copy's own code (the venv's editable install is the checkout's)
    return subprocess.run(["bash", "-c", f"source .venv/bin/activate && {command}"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _serve_briefly(command: str, url: str, repo: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    proc = subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && exec {command}"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.read(200).decode(errors="replace")
            except OSError:
                assert proc.poll() is None, f"{command} exited with {proc.returncode}"
                time.sleep(1)
        raise AssertionError(f"{command} did not answer on {url} within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_every_readme_command_is_run_or_exempt_with_a_reason():
    commands = readme_commands((PROJECT_ROOT / "README.md").read_text())
    assert "source .venv/bin/activate" in commands and "dvc repro" in commands
    assert not [c for c in commands if c.startswith(".venv/bin/")], "one convention: activate, then plain names"
    stale = set(EXEMPT) - set(commands)
    assert not stale, f"EXEMPT lists commands the README no longer shows: {stale}"


def test_back_to_the_full_size_setup_sets_every_value_the_demo_changed_to_the_committed_one():
    import shlex

    import yaml

    committed = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    demo = re.search(r"^DEMO_PARAMS := (.*?)(?<!\\)$", (PROJECT_ROOT / "Makefile").read_text(), re.M | re.S).group(1)
    demo_keys = {a.partition("=")[0] for a in shlex.split(demo.replace("\\\n", " "))}
    back = dict(a.split("=", 1) for a in shlex.split(FULL_SIZE)[3:])
    assert demo_keys <= set(back), f"the README's way back misses {demo_keys - set(back)}"
    for key, raw in back.items():
        node = committed
        for part in key.split("."):
            node = node[part]
        assert yaml.safe_load(raw) == node, f"{key}: the README sets {raw}, params.yaml has {node}"


def _patient_data_staged_on_main(repo: Path) -> list[str]:
    """`git switch main` (the README's way back from the demo's branch) and an everyday `git add -A`: the files
    staged that hold patient data (scans, slices, the manifest, the model, downloads, pictures of slices). The
    index is reset and the demo's branch checked out again afterwards."""
    run_cmd(["git", "switch", "-q", "main"], repo)
    (repo / "my-notes.txt").write_text("a file of the user's\n")
    run_cmd(["git", "add", "-A"], repo)
    staged = run_cmd(["git", "diff", "--cached", "--name-only"], repo).stdout.split()
    run_cmd(["git", "reset", "-q"], repo)
    (repo / "my-notes.txt").unlink()
    run_cmd(["git", "switch", "-q", "brats-seg-demo"], repo)
    assert "my-notes.txt" in staged, staged  # git add -A did pick up untracked files
    return [p for p in staged if p.startswith(("data/raw/", "data/slices/", "data/cache/", "models/unet",
                                                 "data/validated/manifest", "reports/overlays/", "reports/index"))
            or p.endswith((".nii.gz", ".nii", ".npz", ".parquet", ".pt"))]


@pytest.mark.usefixtures("prefect_home")  # the demo's and the flows' temporary Prefect server
def test_the_readme_commands_work_as_written(tmp_path):
    # the run's reproduced project (6 epochs, so that the experiments below change the metrics): the demo's flow
    # checks the source and skips every stage, then promotes, predicts and records, as `make demo` does after them
    repo, _ = reproduced_copy(tmp_path / "clone")
    (repo / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text())  # .venv/ is ignored there already
    demo = _shell("python -m flows.demo", repo)  # what `make demo` runs after writing its params
    assert demo.returncode == 0 and "Traceback" not in demo.stderr, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "recorded as commit" in demo.stdout
    # no line said twice (each stage that loads a network warns of a missing GPU in its own process), and nothing
    # from Prefect after the demo's own last lines (it stopped its temporary server: nothing to act on)
    assert (demo.stdout + demo.stderr).count("no CUDA GPU available") <= 1, demo.stderr[-3000:]
    assert "Stopping temporary server" not in demo.stdout + demo.stderr, demo.stderr[-3000:]
    # every command it suggests comes after the line that says to activate the environment they need
    assert demo.stdout.index("source .venv/bin/activate") < demo.stdout.index("dvc exp run"), demo.stdout[-2000:]
    # the UI command it suggests is the README's own, as written there
    suggested = re.search(r"look at the runs: (.*?) \(open", demo.stdout)[1]
    assert suggested in readme_commands((PROJECT_ROOT / "README.md").read_text()), suggested
    assert run_cmd(["git", "branch", "--show-current"], repo).stdout.strip() == "brats-seg-demo"
    assert run_cmd(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
    # the model's run names the commit that holds its params.yaml and dvc.lock (lineage complete from a dirty tree)
    from mlflow import MlflowClient

    run_id = json.loads((repo / "reports" / "registered.json").read_text())["run_id"]
    tags = MlflowClient(f"sqlite:///{repo}/mlflow/mlflow.db").get_run(run_id).data.tags
    assert tags["git_recorded_commit"] == run_cmd(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert not _patient_data_staged_on_main(repo)


    for command in dict.fromkeys(readme_commands((PROJECT_ROOT / "README.md").read_text())):  # each one once
        if command in EXEMPT:
            continue
        if command in LONG_RUNNING:
            assert "<" in _serve_briefly(command, LONG_RUNNING[command], repo)  # an HTML page answered
            continue
        proc = _shell(command, repo, columns=1000 if command.startswith("dvc exp show") else None)
        out = proc.stdout + proc.stderr
        allowed = {0, 1} if command in MAY_EXIT_1 else {0}
        assert proc.returncode in allowed, f"`{command}` exited {proc.returncode}:\n{out[-3000:]}"
        for bad in ("Traceback", "No module named", "command not found"):
            assert bad not in out, f"`{command}` printed {bad!r}:\n{out[-3000:]}"
        if command.startswith("dvc exp show --only-changed"):  # on a terminal 1000 wide: the table's own width
            widest = max(len(line) for line in proc.stdout.splitlines())
            assert "brats-seg-demo" in proc.stdout and "train.lr" in proc.stdout, proc.stdout  # both rows, the change
            assert ".json" not in proc.stdout and "Created" not in proc.stdout, proc.stdout  # no file hashes, no time
            assert widest <= 160, f"`{command}` is {widest} columns wide:\n{proc.stdout}"
        if command.startswith("python -m flows.pipeline"):  # people read it: no line repeated after each stage
            assert "Data and pipelines are up to date." not in out, out[-3000:]
            regions = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("test:")]
            assert regions == ["WT", "TC", "ET"], proc.stdout  # outside in, as everywhere else
            assert len(re.findall(r"brats-unet v\d", out)) == 1, out[-3000:]  # the model said once, not logged too
        if command.startswith("dvc plots"):  # every plot drawn: the curves, the bars and the three pictures
            assert "failed to load" not in out, out[-3000:]
            assert len(list((repo / "dvc_plots" / "static").glob("*_overlays_*.png"))) >= 3, out[-3000:]
        if command == "dvc metrics diff":  # the demo commit against the experiment: numbers on both sides
            rows = [line for line in proc.stdout.splitlines() if len(re.findall(r"\d\.\d+", line)) >= 2]
            assert "HEAD" in proc.stdout and "workspace" in proc.stdout and rows, proc.stdout
    assert (repo / "predictions" / "BraTS20_Synthetic_003.nii.gz").is_file()  # the label map of a model of regions
