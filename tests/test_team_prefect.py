"""Prefect deployments as a team runs them: a Prefect server on 127.0.0.1, a process work pool, `prefect deploy`
from a fresh clone and a worker that runs the pipeline and the promotion gate to completion.

The commands are the ones prefect.yaml's header lists, run as written in a shell from the clone's root (the worker
with --run-once, so that it returns once the run is over). The clone is of conftest's `team_project`, its data pulled
from the team's DVC remote, with a new learning rate and model name: the worker must retrain, evaluate, register
and promote, against the team's MLflow server on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

import pytest
import yaml

from mlflow import MlflowClient
from tests.support.cohorts import PROJECT_ROOT
from tests.support.prefect_db import seeded_home
from tests.support.projects import run_cmd
from tests.support.services import Service, free_port

pytestmark = pytest.mark.slow

MODEL = "brats-unet-pool"  # its own registered model, so that the MLflow tests' champion is left alone
LR = "0.002"


def prefect_yaml_commands() -> list[str]:
    """The commands prefect.yaml's header comment lists (lines `#   prefect ...`), trailing comments stripped."""
    lines = re.findall(r"^#\s{2,}(prefect .*)$", (PROJECT_ROOT / "prefect.yaml").read_text(), flags=re.M)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines]


class PrefectApi:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict) -> list:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def pool_run(team_project, tmp_path_factory):
    """A Prefect server, a fresh clone, then prefect.yaml's commands in it; yields what they left behind."""
    root = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {"PREFECT_HOME": str(seeded_home(root / "home")), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **team_project.env}
    clone = root / "clone"
    run_cmd(["git", "clone", "-q", str(team_project.path), str(clone)], root)
    run_cmd(["dvc", "pull"], clone, timeout=300)
    run_cmd(["brats-seg", "params", "set", f"train.lr={LR}", f"register.model_name={MODEL}"], clone)
    run_cmd(["git", "commit", "-qam", "a variant for the work pool"], clone)

    server = Service("prefect server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     root / "server.log", env={**os.environ, **env})
    try:
        server.wait_for_http(f"http://127.0.0.1:{port}/api/health")
        outputs = {}
        commands = prefect_yaml_commands()
        worker = [c for c in commands if c.startswith("prefect worker start")]
        for command in [c for c in commands if c not in worker] + [f"{c} --run-once" for c in worker]:
            proc = run_cmd(["bash", "-c", command], clone, check=False, env=env, timeout=600)
            outputs[command] = proc
            assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{proc.stdout[-4000:]}\n" \
                                         f"{proc.stderr[-6000:]}\nserver log:\n{server.tail()}"
        yield {"clone": clone, "api": PrefectApi(env["PREFECT_API_URL"]), "outputs": outputs, "commands": commands}
    finally:
        server.stop()


def test_served_and_deployed_deployments_have_distinct_names():
    from flows.serve import build_deployment, scheduled_pipeline

    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    deployed = {(d["entrypoint"].split(":")[1], d["name"]) for d in deployments}
    served = build_deployment(str(PROJECT_ROOT))
    assert ("scheduled_pipeline", served.name) not in deployed and scheduled_pipeline.name == "brats-seg-scheduled"
    assert {name for _, name in deployed} == {"pool-weekly", "pool-promote"}


def test_prefect_yaml_lists_the_commands_a_team_runs():
    commands = prefect_yaml_commands()
    assert commands == ["prefect work-pool create brats-seg --type process", "prefect --no-prompt deploy --all",
                        "prefect worker start --pool brats-seg",
                        "prefect deployment run 'brats-seg-scheduled/pool-weekly'"]


def test_a_worker_runs_the_deployed_pipeline_and_promotion_to_completion(pool_run, team_project):
    api, clone = pool_run["api"], pool_run["clone"]
    deployment = api.get("/deployments/name/brats-seg-scheduled/pool-weekly")
    assert deployment["work_pool_name"] == "brats-seg"
    # the pull step runs the flow in the clone that deployed it ({{ $PWD }}, resolved by `prefect deploy`)
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(clone)}}]

    run_output = pool_run["outputs"]["prefect deployment run 'brats-seg-scheduled/pool-weekly'"].stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run_output).group(1)
    flow_run = api.get(f"/flow_runs/{flow_run_id}")
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    flows = {f["id"]: f["name"] for f in api.post("/flows/filter", {})}
    runs = api.post("/flow_runs/filter", {})
    assert sorted((flows[r["flow_id"]], r["state_type"]) for r in runs if r["state_type"] != "SCHEDULED") == [
        ("brats-seg-pipeline", "COMPLETED"), ("brats-seg-promote", "COMPLETED"),
        ("brats-seg-scheduled", "COMPLETED")]
    tasks = {t["name"]: t["state_type"] for t in api.post("/task_runs/filter", {})}
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]  # one task per stage, every one of them
    assert {name: state for name, state in tasks.items() if name.startswith("dvc repro ")} == {
        f"dvc repro {stage}": "COMPLETED" for stage in stages}
    # DVC decided: the pulled data stages were up to date, training and what follows it reran
    before = yaml.safe_load(run_cmd(["git", "show", "HEAD:dvc.lock"], clone).stdout)["stages"]
    after = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    assert [stage for stage in before if before[stage] != after[stage]] == [
        stage for stage in before if stage in ("train", "evaluate", "register", "report")]

    # the worker trained a new model with the clone's params and registered and promoted it on the team server
    registered = json.loads((clone / "reports" / "registered.json").read_text())
    assert registered["name"] == MODEL
    client = MlflowClient(team_project.mlflow.url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == registered["version"] == "1" and champion.run_id == registered["run_id"]
    origin_run = json.loads((team_project.path / "reports" / "train_run.json").read_text())["run_id"]
    assert champion.run_id != origin_run  # trained by the worker, not the origin's model re-registered
    assert client.get_run(champion.run_id).data.params["train.lr"] == LR
    assert not (clone / "mlflow").exists()  # everything went to the server
