"""Shared fixtures: telemetry off, tiny synthetic cohorts, a local HTTP server, the real BraTS cases, scratch DVC
projects, and the team servers (PostgreSQL, `mlflow server`) with one tiny pipeline run against them. What they are
built from lives in tests/support/ (cohorts, projects, services), which tests import directly."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import brats_seg  # noqa: F401  # its import sets the telemetry defaults (TELEMETRY_OFF) for every test's processes
from brats_seg.runtime import tune_for_a_short_process

# a test worker imports torch, MLflow and pandas too: the collector settings of a stage (benchmarks/process_gc.py)
tune_for_a_short_process()

os.environ.setdefault("TQDM_DISABLE", "1")
# dvc, and the `python` its stages run, come from this interpreter's environment (as under `make`)
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

from tests.support.cohorts import PROJECT_ROOT, REAL_DATA, FileServer, write_synthetic_cohort  # noqa: E402
from tests.support.once import RUN_DIR  # noqa: E402
from tests.support.prefect_db import seeded_home  # noqa: E402
from tests.support.projects import make_dvc_project, require, run_cmd  # noqa: E402
from tests.support.services import (  # noqa: E402
    MLFLOW_SERVER_SIDE,
    Postgres,
    Service,
    TeamMlflow,
    TeamProject,
    free_port,
    mlflow_team_commands,
    postgres_bin_dir,
)

DURATIONS = Path(__file__).parent / "durations.json"  # seconds per test file (scripts/test_durations.py)
OWN_PREFECT_HOME = "BRATS_TEST_PREFECT_HOME"  # the PREFECT_HOME a worker made for itself


# Test files that share session fixtures, run on one worker so that those are built once: the team servers
# (PostgreSQL, `mlflow server`) and their pipeline run; Prefect's test harness (its server migrates a database of its
# own at start-up). tests/test_durations.py finds every file that uses them.
SHARED_FIXTURES = {"team": {"postgres", "team_mlflow", "team_project"}, "prefect-harness": {"prefect_server"}}
SHARED = {**{file: "team" for file in ("tests/test_team_mlflow.py", "tests/test_team_prefect.py",
                                       "tests/test_team_dvc_remote.py", "tests/test_copy_store.py")},
          **{file: "prefect-harness" for file in ("tests/test_flows.py", "tests/test_lifecycle.py")}}


def pytest_configure(config):
    """A flow run without PREFECT_API_URL starts Prefect's temporary server, whose database lives in PREFECT_HOME:
    each process that runs tests (each xdist worker, not their controller) gets a home of its own instead of the
    user's ~/.prefect, which the workers would share with each other and with the user's own runs. The run's top
    process (the controller, or pytest alone) makes the folder of what the run builds once for every worker (a
    migrated Prefect database, a reproduced project: tests/support/once.py), which its workers inherit."""
    worker = hasattr(config, "workerinput")
    if not worker and RUN_DIR not in os.environ:
        os.environ[RUN_DIR] = tempfile.mkdtemp(prefix="brats-test-run-")
        atexit.register(shutil.rmtree, os.environ[RUN_DIR], True)
    if "PREFECT_HOME" in os.environ or (config.getoption("dist", "no") != "no" and not worker):
        return
    os.environ["PREFECT_HOME"] = os.environ[OWN_PREFECT_HOME] = tempfile.mkdtemp(prefix="brats-test-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)


@pytest.fixture(scope="session")
def prefect_home() -> Path | None:
    """The worker's own Prefect home (:func:`pytest_configure`) holding a migrated database, for a test whose flow
    starts Prefect's temporary server there: it starts in seconds, not after every migration. None where
    PREFECT_HOME is the user's own: that is left as it is."""
    own = os.environ.get(OWN_PREFECT_HOME)
    return seeded_home(Path(own)) if own is not None and own == os.environ.get("PREFECT_HOME") else None


def group_of(nodeid: str) -> str:
    """The worker's unit of a test: its file, or the group of files it shares session fixtures with."""
    file = nodeid.split("::")[0]
    return SHARED.get(file, file)


def pytest_xdist_make_scheduler(config, log):
    """`make test` (``--dist loadfile``): a file, or a group of :data:`SHARED` files, runs on one worker. (xdist's
    own ``loadgroup`` marks nothing under pytest 9.2: it renames ``item._nodeid``, which pytest no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class GroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Start the longest groups first (:func:`run_order`): with ``--no-loadscope-reorder`` xdist takes them in
    this order."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    keys = [(item.nodeid.split("::")[0], group_of(item.nodeid)) for item in items]
    items[:] = [items[i] for i in run_order(keys, seconds)]


def run_order(keys: list[tuple[str, str]], seconds: dict[str, float]) -> list[int]:
    """The indices of tests, given as (file, group), in the order to start them: groups by the seconds of their
    files in tests/durations.json, longest first, a file not listed yet first of all (xdist's own order, most
    tests first, left the README's test, two tests and four minutes, to run alone at the end); within a group,
    the order given."""
    files: dict[str, set[str]] = {}
    for file, group in keys:
        files.setdefault(group, set()).add(file)
    cost = {group: sum(seconds.get(f, float("inf")) for f in names) for group, names in files.items()}
    first = {group: i for i, (_, group) in reversed(list(enumerate(keys)))}
    return sorted(range(len(keys)), key=lambda i: (-cost[keys[i][1]], first[keys[i][1]], i))


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Path:
    """Four 48 x 48 x 24 synthetic cases (case 4 without tumour) in canonical layout."""
    root = tmp_path / "raw"
    write_synthetic_cohort(root, 4, tumour_free=(4,))
    return root


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real BraTS cases not found at {REAL_DATA} (only present on the team's machines)")
    return REAL_DATA


@pytest.fixture
def file_server():
    server = FileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="session")
def slices(tmp_path_factory) -> Path:
    """The slice stage's output for 8 tiny synthetic cases (one without tumour), split 0.6/0.2/0.2; read only."""
    from brats_seg.data.slicing import run_slice
    from brats_seg.data.spec import SliceParams
    from brats_seg.data.validation import ValidateParams, read_manifest, run_validate

    root = tmp_path_factory.mktemp("cohort")
    write_synthetic_cohort(root / "raw", 8, shape=(64, 64, 24), tumour_free=(8,))
    run_validate(ValidateParams(workers=1), root / "raw", root / "m.parquet", root / "rep", root / "v.json")
    run_slice(SliceParams(size=32, workers=1, keep_empty_fraction=0.2, split=(0.6, 0.2, 0.2)), root / "raw",
              read_manifest(root / "m.parquet"), root / "slices", seed=0)
    return root / "slices"


@pytest.fixture
def dvc_project(tmp_path: Path):
    """A fresh git + DVC repository holding this project's pipeline, with tiny params."""
    return make_dvc_project(tmp_path / "project")


# --- team mode: real servers on 127.0.0.1 (tests/test_team_*.py) ---------------------------------------------------
# A PostgreSQL cluster and the team's `mlflow server` (as mlflow/README.md starts it) for the whole session, and one
# tiny pipeline run against them (`team_project`), shared by the MLflow, DVC remote and Prefect team tests.


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster for the session (Debian's `postgresql` server binaries; make test installs them)."""
    bin_dir = postgres_bin_dir()
    require(bin_dir is not None and (bin_dir / "postgres").is_file(),
            "PostgreSQL's server binaries (initdb, postgres) are not installed: apt-get install -y postgresql")
    root = Path(tempfile.mkdtemp(prefix="brats-pg-"))  # not under pytest's tmp: that is private to this user
    try:
        server = Postgres(root, bin_dir)
        try:
            yield server
        finally:
            server.service.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def team_mlflow(postgres, tmp_path_factory):
    """`mlflow server` on PostgreSQL with proxied artifacts, on 127.0.0.1, started by mlflow/README.md's commands."""
    root = tmp_path_factory.mktemp("team-mlflow")
    home, artifacts, port = root / "home", root / "artifacts", free_port()
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}  # the server's user: no PG* variables, its password is in ~/.pgpass
    service, ran = None, []
    try:
        for command in mlflow_team_commands():
            if not command.startswith(MLFLOW_SERVER_SIDE):
                continue
            here = (command.removeprefix("sudo -u postgres ").replace("127.0.0.1:5432", f"127.0.0.1:{postgres.port}")
                    .replace("/srv/mlflow/artifacts", str(artifacts)))
            ran.append(command)
            if command.startswith("make mlflow-server"):
                assert service is None, "mlflow/README.md starts the server twice"
                # `-o .venv/.installed`: the venv is this one (make test set it up); 1 worker on a 2-core machine
                here = here.replace("make ", "make -o .venv/.installed ", 1) + f" PORT={port} WORKERS=1"
                service = Service("mlflow server", ["bash", "-c", f"exec {here}"], root / "mlflow.log", env=env,
                                  cwd=PROJECT_ROOT)
                continue
            proc = subprocess.run(["bash", "-c", here], env={**env, **postgres.env}, capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 0, f"`{command}` (run as `{here}`) failed:\n{proc.stdout}{proc.stderr}"
        assert service is not None, "mlflow/README.md's team section never starts the server (make mlflow-server)"
        service.wait_for_http(f"http://127.0.0.1:{port}/health")
        yield TeamMlflow(port, artifacts, postgres, service, ran)
    finally:
        if service is not None:
            service.stop()


@pytest.fixture(scope="session")
def team_project(team_mlflow, tmp_path_factory) -> TeamProject:
    """One tiny `dvc repro` (1 epoch) with MLFLOW_TRACKING_URI at the team server, then `git commit` and `dvc push` to
    a folder remote: shared by tests/test_team_*.py, which clone it and must not change its git history."""
    root = tmp_path_factory.mktemp("team")
    repo = make_dvc_project(root / "origin", {"train": {"epochs": 1}, "promote": {"min_dice": 0.0}}).path
    shutil.copy(PROJECT_ROOT / "prefect.yaml", repo / "prefect.yaml")
    remote = root / "team-share" / "dvc" / "brats-seg"
    run_cmd(["dvc", "remote", "add", "-d", "team", str(remote)], repo)
    run_cmd(["git", "add", "prefect.yaml", ".dvc/config"], repo)
    run_cmd(["git", "commit", "-qm", "team setup: Prefect deployments, DVC remote"], repo)
    project = TeamProject(repo, remote, team_mlflow)
    run_cmd(["dvc", "repro"], repo, env=project.env, timeout=900)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "tiny pipeline run"], repo)
    run_cmd(["dvc", "push"], repo, timeout=300)
    return project


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (prefect_test_harness) for every flow test of the session: it starts once."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty sqlite MLflow store with MLflow's schema, migrated once per session (about 1.5 s each time)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path, monkeypatch, migrated_mlflow_db) -> Path:
    """A fresh working directory whose default store (sqlite:///mlflow/mlflow.db) is an empty, migrated copy of
    the session's template; MLFLOW_TRACKING_URI unset, so that everything uses it."""
    (tmp_path / "mlflow").mkdir()
    shutil.copyfile(migrated_mlflow_db, tmp_path / "mlflow" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
