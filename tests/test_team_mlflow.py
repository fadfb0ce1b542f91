"""A team's MLflow server, for real: runs and registry in PostgreSQL, artifacts proxied by `mlflow server`, 127.0.0.1.

mlflow/README.md's team section is run as written: conftest's `team_mlflow` sets up the database and starts the
server with its server-side commands, `team_project` runs the tiny pipeline (`dvc repro`) with MLFLOW_TRACKING_URI
at it, and the client commands (promote, lineage, predict) run here. Then the run, the model version, its aliases
and artifacts are read back from the server's REST API, from the server's artifact folder and from PostgreSQL's
tables, and the project must hold no local tracking store.
"""

from __future__ import annotations

import json
import re
import subprocess

import nibabel as nib
import numpy as np
import psycopg
import pytest
from mlflow.artifacts import download_artifacts

from mlflow import MlflowClient
from tests.support.cohorts import PROJECT_ROOT
from tests.support.projects import run_cmd
from tests.support.services import MLFLOW_EXEMPT, MLFLOW_README, MLFLOW_SERVER_SIDE, mlflow_team_commands

pytestmark = pytest.mark.slow

CLIENT_SIDE = ("export MLFLOW_TRACKING_URI=", "dvc repro", "brats-seg ")
CASE = "BraTS20_Synthetic_002"  # the case the README's predict command names; the tiny cohort has it


@pytest.fixture(scope="module")
def client_commands(team_project) -> dict[str, subprocess.CompletedProcess | None]:
    """The README's client commands, in order, in the team project with the environment its `export` sets; `dvc
    repro` is the run `team_project` made with that same environment (None here)."""
    env: dict[str, str] = {}
    results: dict[str, subprocess.CompletedProcess | None] = {}
    for command in mlflow_team_commands():
        if not command.startswith(CLIENT_SIDE):
            continue
        if command.startswith("export "):
            name, value = command.removeprefix("export ").split("=", 1)
            env[name] = team_project.mlflow.here(value)
        elif command == "dvc repro":
            assert env == team_project.env, "team_project ran `dvc repro` with another environment than the README's"
            results[command] = None
        else:
            results[command] = run_cmd(["bash", "-c", command], team_project.path, check=False, env=env, timeout=600)
    return results


def _registered(team_project) -> dict:
    return json.loads((team_project.path / "reports" / "registered.json").read_text())


def test_every_command_of_the_team_section_is_run_or_exempt(team_mlflow, client_commands):
    commands = mlflow_team_commands()
    assert set(MLFLOW_EXEMPT) <= set(commands), f"exempt but no longer in mlflow/README.md: "\
                                                f"{set(MLFLOW_EXEMPT) - set(commands)}"
    unknown = [c for c in commands if c not in MLFLOW_EXEMPT and not c.startswith(MLFLOW_SERVER_SIDE + CLIENT_SIDE)]
    assert not unknown, f"mlflow/README.md commands that no test runs: {unknown}"
    assert team_mlflow.ran == [c for c in commands if c.startswith(MLFLOW_SERVER_SIDE)]
    assert list(client_commands) == [c for c in commands if c.startswith(CLIENT_SIDE[1:])]
    for command, proc in client_commands.items():
        if proc is not None:  # lineage --verify exits 1 on drift: nothing drifted here, so every command exits 0
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0 and "Traceback" not in out, f"`{command}` exited {proc.returncode}:\n{out}"


def test_the_server_binds_127_0_0_1_unless_told_otherwise():
    readme = MLFLOW_README.read_text()
    assert "--host 0.0.0.0" not in readme and "HOST=0.0.0.0" not in readme
    dry = run_cmd(["make", "-n", "-o", ".venv/.installed", "mlflow-server"], PROJECT_ROOT,
                  env={"HOST": "0.0.0.0", "PORT": "80"}).stdout  # an environment's HOST/PORT must not rebind it
    assert "--host '127.0.0.1' --port '5000'" in dry, dry
    assert f"--backend-store-uri 'sqlite:///{PROJECT_ROOT}/mlflow/mlflow.db'" in dry
    assert f"--artifacts-destination '{PROJECT_ROOT}/mlflow/artifacts'" in dry
    told = run_cmd(["make", "-n", "-o", ".venv/.installed", "mlflow-server", "HOST=10.1.2.3", "PORT=5050",
                    "BACKEND=postgresql://mlflow@db/mlflow", "ARTIFACTS=s3://b/a", "OPTS=--app-name basic-auth"],
                   PROJECT_ROOT).stdout
    # the backend (it may hold a password) reaches mlflow through its environment, not the command line `ps` shows
    assert "MLFLOW_BACKEND_STORE_URI='postgresql://mlflow@db/mlflow'" in told and "--backend-store-uri 'post" in told
    assert re.search(r"mlflow server \\?\s*--artifacts-destination 's3://b/a' --host '10.1.2.3' --port '5050' "
                     r"--workers '4' --app-name basic-auth", told), told


def test_the_run_and_its_artifacts_live_on_the_server(team_mlflow, team_project, client_commands):
    client = MlflowClient(team_mlflow.url)
    run_id = _registered(team_project)["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert client.get_experiment(run.info.experiment_id).name == "brats-seg"
    eval_report = json.loads((team_project.path / "reports" / "eval.json").read_text())
    assert run.data.metrics["test_wt_dice_mean"] == pytest.approx(eval_report["wt"]["dice_mean"])
    assert run.data.params["train.epochs"] == "1"
    # proxied: what the server lists is in its --artifacts-destination folder, and downloads give those bytes
    stored = [p for p in team_mlflow.artifacts.rglob(run_id) if p.is_dir()]
    assert len(stored) == 1, f"run {run_id} not found under {team_mlflow.artifacts}"
    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"eval.json", "eval_cases.csv", "overlays", "splits"} <= listed, listed
    for path in listed:
        assert (stored[0] / "artifacts" / path).exists(), f"{path} listed by the server but not in its store"
    local = download_artifacts(run_id=run_id, artifact_path="eval.json", tracking_uri=team_mlflow.url)
    assert open(local, "rb").read() == (stored[0] / "artifacts" / "eval.json").read_bytes()
    assert json.loads(open(local).read()) == eval_report
    assert not (team_project.path / "mlflow" / "mlflow.db").exists()
    assert not (team_project.path / "mlflow" / "artifacts").exists()


def test_runs_versions_and_aliases_are_rows_in_postgresql(team_mlflow, team_project, client_commands):
    registered = _registered(team_project)
    pg = team_mlflow.postgres
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=pg.superuser, password=pg.password,
                         dbname="mlflow") as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'runs'").fetchone()
        runs = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (registered["run_id"],)).fetchall()
        versions = conn.execute("SELECT version, run_id FROM model_versions WHERE name = 'brats-unet'").fetchall()
        aliases = dict(conn.execute("SELECT alias, version FROM registered_model_aliases "
                                    "WHERE name = 'brats-unet'").fetchall())
    assert owner == ("mlflow",)  # the server logged in as the README's role, with the password from ~/.pgpass
    assert runs == [("FINISHED",)]
    assert (int(registered["version"]), registered["run_id"]) in versions
    assert aliases.get("champion") == int(registered["version"])  # `brats-seg promote` moved it, on the server


def test_promote_lineage_and_predict_use_the_registry_on_the_server(team_mlflow, team_project, client_commands):
    registered = _registered(team_project)
    client = MlflowClient(team_mlflow.url)
    assert client.get_model_version_by_alias("brats-unet", "champion").version == registered["version"]
    promote = json.loads(client_commands["brats-seg promote"].stdout)
    assert promote["promoted"] and str(promote["version"]) == registered["version"]

    lineage = client_commands["brats-seg lineage models:/brats-unet@champion --verify"].stdout
    assert registered["run_id"] in lineage and "workspace matches" in lineage, lineage

    predicted = client_commands[f"brats-seg predict data/raw/{CASE} --out predictions/"]
    mask_path = team_project.path / "predictions" / f"{CASE}.nii.gz"
    assert f"-> predictions/{CASE}.nii.gz" in predicted.stdout and mask_path.is_file(), predicted.stdout
    # the champion from the server is the model file this run trained: the same mask, voxel for voxel
    run_cmd(["brats-seg", "predict", f"data/raw/{CASE}", "--model", "models/unet.pt", "--out", "local-model/"],
            team_project.path)
    served, local = nib.load(mask_path), nib.load(team_project.path / "local-model" / f"{CASE}.nii.gz")
    image = nib.load(team_project.path / "data" / "raw" / CASE / f"{CASE}_flair.nii.gz")
    assert served.shape == image.shape and np.allclose(served.affine, image.affine)
    assert np.array_equal(np.asarray(served.dataobj), np.asarray(local.dataobj))
    assert not (team_project.path / "mlflow").exists()  # no local store, not even its folder
