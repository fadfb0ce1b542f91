"""`brats-seg copy-store`: moving a local store to the team's server, for real.

The source is a local store in a workspace, made by the project's own code: three training runs (params, metric
histories, split tables, artifacts) each registered by the register stage (version 2 then deleted, so that its number
stays unused), champion and challenger aliases, and promotion decisions in the audit trail. The destination is a team
server of its own: `mlflow server` on a database of the session's PostgreSQL cluster, with proxied artifacts, on
127.0.0.1, started by `make mlflow-server`. mlflow/README.md's section on moving is run as written; then both stores
are read back and compared: every run, every step of every metric, every artifact, every version and alias, the model
loaded by alias. Also: copying again copies nothing, a copy cut off half-way is finished by the next one, a model the
server holds from elsewhere is refused in one sentence before anything is copied, the source is never changed, and a
workspace whose reports name the old run ids goes on against the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.artifacts import download_artifacts

from brats_seg.base_params import BaseParams
from brats_seg.cli import main as cli
from brats_seg.errors import UserError
from brats_seg.inference.bundle import save_model
from brats_seg.io.tables import write_json
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet
from brats_seg.registry import tracking, versions
from brats_seg.registry.audit import record_decision
from brats_seg.registry.copy_store import COPYING_TAG, MODEL_TAG, VERSION_TAG, copy_store
from brats_seg.registry.params import RegisterParams
from brats_seg.registry.resolve import resolve_model
from brats_seg.registry.tracking import COPIED_FROM_TAG
from brats_seg.runners.register import register_stage
from mlflow import MlflowClient
from tests.support.cohorts import PROJECT_ROOT
from tests.support.projects import bash_commands, run_cmd
from tests.support.services import MLFLOW_README, Service, free_port

slow = pytest.mark.slow
NAME = "brats-unet"  # params.yaml's register.model_name: the README's `brats-seg versions` lists it
SECTION = "## Moving an existing local store to the team server"
SLICE = {"size": 16, "margin": 2, "modalities": ["flair", "t2"]}
SPLITS = pd.DataFrame({"case_id": ["c1", "c2", "c3", "c4"], "patient_id": ["p1", "p2", "p3", "p4"],
                       "split": ["train", "train", "val", "test"], "image_sha256": ["a1", "b2", "c3", "d4"]})


def section_commands() -> list[str]:
    """The commands of mlflow/README.md's section on moving a local store, in order."""
    text = MLFLOW_README.read_text()
    assert SECTION in text, f"mlflow/README.md has no section {SECTION!r}"
    return bash_commands(text.split(SECTION, 1)[1].split("\n## ", 1)[0])


def _copy_command() -> str:
    found = [c for c in section_commands() if c.startswith("brats-seg copy-store ")]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """A team server of this module's own (database copy_store of the session's PostgreSQL cluster), started by
    `make mlflow-server` as mlflow/README.md starts the team's; yields its URL and artifact folder."""
    root = tmp_path_factory.mktemp("copy-server")
    made = subprocess.run([str(postgres.bin_dir / "createdb"), "copy_store"], env={**os.environ, **postgres.env},
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port, artifacts = free_port(), root / "artifacts"
    backend = f"postgresql://{postgres.superuser}:{postgres.password}@127.0.0.1:{postgres.port}/copy_store"
    service = Service("mlflow server", ["make", "-o", ".venv/.installed", "mlflow-server", f"BACKEND={backend}",
                                        f"ARTIFACTS={artifacts}", f"PORT={port}", "WORKERS=1"],
                      root / "mlflow.log", env=dict(os.environ), cwd=PROJECT_ROOT)
    try:
        service.wait_for_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", artifacts
    finally:
        service.stop()


def _train_and_register(root: Path, seed: int) -> str:
    """A training run as the train and evaluate stages log one, registered by the register stage; returns its id."""
    with tracking.start_run("brats-seg", run_name=f"train-{seed}") as run:
        run.log_params({"train": {"epochs": 3, "lr": 0.01 * (seed + 1), "modalities": ["flair", "t2"]}, "seed": seed})
        for epoch in (1, 2, 3):
            run.log_metrics({"val_dice": 0.2 * epoch + seed / 100, "loss": 1.0 / epoch + seed}, step=epoch)
        run.log_metrics({"test_wt_dice_mean": 0.7 + seed / 100})
        run.set_tags({"git_commit": f"{seed}" * 40, "split_digest": "split-a"})
        run.log_split_tables(SPLITS)
        run.log_dict({"wt": {"dice_mean": 0.7 + seed / 100}}, "eval.json")
        (root / "overlay.png").write_bytes(bytes(range(256)) * (seed + 1))
        run.log_artifact(root / "overlay.png", "overlays")
    torch.manual_seed(seed)
    model = save_model(root / "models" / "unet.pt", UNet(ModelConfig(in_channels=2, out_channels=2, base=4, depth=1)),
                       ("wt", "tc"), SLICE, extra={"split_digest": "split-a", "fingerprint": f"{seed}" * 16})
    shutil.copy(model, root / f"unet-{seed}.pt")
    write_json(root / "reports" / "train_run.json", {"run_id": run.run_id})
    write_json(root / "reports" / "eval.json", {"wt": {"dice_mean": 0.7 + seed / 100, "hd95_median": 3.0}})
    register_stage(RegisterParams(model_name=NAME), BaseParams())
    return run.run_id


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A project folder whose local store (mlflow/mlflow.db, mlflow/artifacts) the project's own code filled."""
    root = tmp_path_factory.mktemp("copy-source")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        runs = [_train_and_register(root, seed) for seed in range(3)]
        client = MlflowClient(tracking.tracking_uri())
        client.delete_model_version(NAME, "2")  # the copy must give version 3 its number all the same
        client.update_model_version(NAME, "1", description="the first model of the project")
        client.update_registered_model(NAME, description="brats-seg's U-Net")
        versions.set_alias(NAME, "champion", "1")
        record_decision(NAME, "1", {"promotion_challenger_dice": "0.700000"}, True, "forced")
        record_decision(NAME, "3", {"promotion_challenger_dice": "0.720000"}, False, "not better than the champion")
        with tracking.start_run("brats-seg", run_name="deleted") as gone:
            gone.log_metrics({"loss": 9.0})
        client.delete_run(gone.run_id)
    (root / "runs.json").write_text(json.dumps({"trained": runs, "deleted": gone.run_id}))
    return root


def _store_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "mlflow").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def copied(workspace, server) -> dict:
    """mlflow/README.md's section run as written in the workspace (the server's port for 5000, the `export` applied
    to the commands after it); the store's digests before, and each command's result."""
    url, _ = server
    before, env, results = _store_digest(workspace), {}, {}
    for command in section_commands():
        here = command.replace("127.0.0.1:5000", url.removeprefix("http://"))
        if command.startswith("export "):
            key, value = here.removeprefix("export ").split("=", 1)
            env[key] = value
            continue
        results[command] = run_cmd(["bash", "-c", here], workspace, check=False, env=env, timeout=600)
    return {"before": before, "results": results, "env": env}


def _all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def _files(uri: str, run_id: str, tmp: Path) -> dict[str, bytes]:
    if not MlflowClient(uri).list_artifacts(run_id):
        return {}
    root = Path(download_artifacts(run_id=run_id, dst_path=str(tmp / run_id), tracking_uri=uri))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _moved(source: str, roots: dict[str, str]) -> str:
    """A dataset's source with the artifact folder of every run of the source store replaced by its copy's."""
    assert any(old in source for old in roots), source  # a file of a run that was copied
    for old, new in roots.items():
        source = source.replace(old, new)
    return source


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(number) for alias, number in client.get_registered_model(NAME).aliases.items()}


def _source(workspace: Path) -> str:
    return f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}"


@slow
def test_the_readme_commands_copy_the_store_and_leave_it_as_it_was(workspace, server, copied):
    url, _ = server
    for command, proc in copied["results"].items():
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in out, f"`{command}` exited {proc.returncode}:\n{out}"
    assert copied["env"] == {"MLFLOW_TRACKING_URI": url}
    assert copied["results"][_copy_command()].stdout == (
        f"copied 5 runs (0 there already) of 3 experiments and 2 model versions (0 there already), 2 aliases set, "
        f"from sqlite:///mlflow/mlflow.db to {url}\n")
    assert _store_digest(workspace) == copied["before"]  # nothing of the local store changed
    # `brats-seg versions` and `brats-seg audit` say on the server what they say on the local store (new run ids)
    runs = {r.data.tags[COPIED_FROM_TAG]: r.info.run_id for r in _all_runs(MlflowClient(url))}
    for command in ("brats-seg versions", "brats-seg audit"):
        assert command in copied["results"], f"mlflow/README.md's section no longer runs `{command}`"
        local = run_cmd(command.split(), workspace).stdout
        for old, new in runs.items():
            local = local.replace(old, new)
        assert copied["results"][command].stdout == local and "v3" in local, local


@slow
def test_every_run_is_copied_with_params_metric_histories_tags_inputs_and_artifacts(workspace, server, copied,
                                                                                       tmp_path):
    url, artifacts = server
    src, dst = MlflowClient(_source(workspace)), MlflowClient(url)
    expected = json.loads((workspace / "runs.json").read_text())
    source_runs = _all_runs(src)
    copies = {r.data.tags[COPIED_FROM_TAG]: r for r in _all_runs(dst)}
    assert sorted(copies) == sorted(r.info.run_id for r in source_runs) and len(copies) == len(_all_runs(dst)) == 5
    roots = {r.info.artifact_uri: copies[r.info.run_id].info.artifact_uri for r in source_runs}
    assert set(expected["trained"]) <= set(copies) and expected["deleted"] not in copies
    for run in source_runs:
        copy = copies[run.info.run_id]
        assert copy.info.run_id != run.info.run_id
        assert dst.get_experiment(copy.info.experiment_id).name == src.get_experiment(run.info.experiment_id).name
        assert (copy.info.run_name, copy.info.status, copy.info.start_time, copy.info.end_time) == (
            run.info.run_name, run.info.status, run.info.start_time, run.info.end_time)
        assert copy.data.params == run.data.params
        assert {k: v for k, v in copy.data.tags.items() if k != COPIED_FROM_TAG} == run.data.tags
        for key in run.data.metrics:
            assert [(m.step, m.timestamp, m.value) for m in dst.get_metric_history(copy.info.run_id, key)] == [
                (m.step, m.timestamp, m.value) for m in src.get_metric_history(run.info.run_id, key)], key
        assert copy.data.metrics.keys() == run.data.metrics.keys()
        assert sorted((d.dataset.name, d.dataset.digest, d.dataset.source, d.dataset.schema, sorted((t.key, t.value)
                      for t in d.tags)) for d in copy.inputs.dataset_inputs) == sorted(
            (d.dataset.name, d.dataset.digest, _moved(d.dataset.source, roots), d.dataset.schema,
             sorted((t.key, t.value) for t in d.tags)) for d in run.inputs.dataset_inputs)
        files = _files(url, copy.info.run_id, tmp_path / "dst")
        assert files == _files(_source(workspace), run.info.run_id, tmp_path / "src")
        stored = {p.relative_to(artifacts / copy.info.experiment_id / copy.info.run_id / "artifacts").as_posix()
                  for p in (artifacts / copy.info.experiment_id / copy.info.run_id).rglob("*") if p.is_file()}
        assert copy.info.artifact_uri.startswith("mlflow-artifacts:/") and stored == set(files)  # the server holds them
    trained = copies[expected["trained"][0]]
    assert dst.get_metric_history(trained.info.run_id, "val_dice")[-1].step == 3
    assert {d.dataset.name for d in trained.inputs.dataset_inputs} == {"train-split", "val-split", "test-split"}
    assert {"eval.json", "overlays/overlay.png", "splits/train.csv"} <= set(_files(url, trained.info.run_id, tmp_path))


@slow
def test_versions_keep_their_numbers_tags_and_aliases_and_the_champion_loads_from_the_server(workspace, server, copied,
                                                                                              monkeypatch, tmp_path):
    url, _ = server
    src, dst = MlflowClient(_source(workspace)), MlflowClient(url)
    runs = {r.data.tags[COPIED_FROM_TAG]: r.info.run_id for r in _all_runs(dst)}
    source_versions = {str(v.version): v for v in src.search_model_versions(f"name = '{NAME}'")}  # sqlite: ints
    copies = {str(v.version): v for v in dst.search_model_versions(f"name = '{NAME}'")}
    assert sorted(copies, key=int) == sorted(source_versions, key=int) == ["1", "3"]
    for number, version in source_versions.items():
        copy = copies[number]
        assert copy.run_id == runs[version.run_id] and (copy.description or None) == (version.description or None)
        assert copy.tags == {**version.tags, "run_id": copy.run_id,
                             VERSION_TAG: f"{NAME} v{number} of run {version.run_id}"}
        assert copy.source.startswith("models:/m-") and copy.source != version.source
        model = dst.get_logged_model(copy.source.removeprefix("models:/"))
        assert model.source_run_id == copy.run_id and model.tags[MODEL_TAG] == version.source.removeprefix("models:/")
    assert copies["1"].description == "the first model of the project"
    assert dst.get_registered_model(NAME).description == src.get_registered_model(NAME).description != ""
    assert _aliases(dst) == _aliases(src) == {"champion": "1", "challenger": "3"}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for alias, seed in (("champion", 0), ("challenger", 2)):  # every file checked against its SHA-256, then loaded
        served = resolve_model(f"models:/{NAME}@{alias}", "cpu").model.state_dict()
        trained = resolve_model(str(workspace / f"unet-{seed}.pt"), "cpu").model.state_dict()
        assert served.keys() == trained.keys() and all(torch.equal(served[k], trained[k]) for k in served)


@slow
def test_copying_again_copies_nothing(workspace, server, copied):
    url, _ = server
    dst = MlflowClient(url)
    runs = sorted(r.info.run_id for r in _all_runs(dst))
    again = run_cmd(["bash", "-c", _copy_command().replace("127.0.0.1:5000", url.removeprefix("http://"))],
                    workspace)
    assert again.stdout == (f"copied 0 runs (5 there already) of 3 experiments and 0 model versions (2 there already), "
                            f"0 aliases set, from sqlite:///mlflow/mlflow.db to {url}\n")
    assert sorted(r.info.run_id for r in _all_runs(dst)) == runs
    assert sorted(v.version for v in dst.search_model_versions(f"name = '{NAME}'")) == ["1", "3"]
    assert _store_digest(workspace) == copied["before"]


def _small_store(root: Path, experiment: str, model: str, n: int) -> tuple[str, list[str]]:
    """A store of ``n`` finished runs, each with a loss and a model folder, each registered as a version of
    ``model`` whose source is that folder (as MLflow 2 registered them); returns its URI and the run ids."""
    root.mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model(model)
    ids = []
    for i in range(n):
        run = client.create_run(experiment_id, run_name=f"run-{i}")
        client.log_metric(run.info.run_id, "loss", 1.0 / (i + 1), step=i)
        (root / f"model-{i}").mkdir()
        (root / f"model-{i}" / "weights.bin").write_bytes(bytes([i]) * 100)
        client.log_artifacts(run.info.run_id, str(root / f"model-{i}"), "model")
        client.set_terminated(run.info.run_id)
        client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        ids.append(run.info.run_id)
    return uri, ids


def _cut_at(monkeypatch, method: str, call: int) -> None:
    """Make the ``call``-th call of MlflowClient.``method`` fail, as a copy killed there would stop."""
    real, calls = getattr(MlflowClient, method), []

    def cut(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, cut)


@slow
def test_a_copy_cut_off_half_way_is_finished_by_the_next_without_duplicates(server, tmp_path, monkeypatch):
    url, _ = server
    uri, ids = _small_store(tmp_path / "cut", "brats-seg-cut", "brats-unet-cut", 3)
    dst = MlflowClient(url)
    with monkeypatch.context() as patch:
        _cut_at(patch, "log_artifacts", 2)  # the second run's files
        with pytest.raises(KeyboardInterrupt):
            copy_store(uri, url)
    experiment = dst.get_experiment_by_name("brats-seg-cut").experiment_id
    made = {r.data.tags.get(COPIED_FROM_TAG, "half"): r for r in dst.search_runs([experiment])}
    assert sorted(made) == sorted([ids[0], "half"]) and made["half"].data.tags[COPYING_TAG] == ids[1]
    with monkeypatch.context() as patch:
        _cut_at(patch, "create_model_version", 2)  # the second version
        with pytest.raises(KeyboardInterrupt):
            copy_store(uri, url)
    assert dst.get_run(made["half"].info.run_id).info.lifecycle_stage == "deleted"
    assert [v.version for v in dst.search_model_versions("name = 'brats-unet-cut'")] == ["1"]
    counts = copy_store(uri, url)
    assert (counts["runs"], counts["runs_copied"], counts["versions"], counts["versions_copied"]) == (3, 0, 3, 2)
    copies = {r.data.tags[COPIED_FROM_TAG]: r for r in dst.search_runs([experiment])}
    assert sorted(copies) == sorted(ids) and not any(COPYING_TAG in r.data.tags for r in copies.values())
    for i, run_id in enumerate(ids):
        copy = copies[run_id]
        assert _files(url, copy.info.run_id, tmp_path) == {"model/weights.bin": bytes([i]) * 100}
        assert [(m.step, m.value) for m in dst.get_metric_history(copy.info.run_id, "loss")] == [(i, 1.0 / (i + 1))]
        version = dst.get_model_version("brats-unet-cut", str(i + 1))
        assert version.run_id == copy.info.run_id and version.source == f"{copy.info.artifact_uri}/model"
    assert copy_store(uri, url)["runs_copied"] == 0


@slow
def test_a_model_the_server_holds_from_elsewhere_is_refused_before_anything_is_copied(server, copied, tmp_path,
                                                                                      capsys):
    url, _ = server
    uri, _ = _small_store(tmp_path / "colleague", "colleague", NAME, 1)  # a colleague's local store, same model name
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli(["copy-store", "--from", uri, "--to", url])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"error: the registry at {url} already holds {NAME} with versions 1, 3 that are not a copy of {uri}'s, and "
        f"copying would renumber the versions; rename or delete {NAME} there, or copy into another store.\n")
    dst = MlflowClient(url)
    assert dst.get_experiment_by_name("colleague") is None  # refused before its runs went anywhere
    assert sorted(v.version for v in dst.search_model_versions(f"name = '{NAME}'")) == ["1", "3"]


@slow
def test_a_workspace_whose_reports_name_the_old_runs_goes_on_against_the_server(workspace, server, copied,
                                                                                 monkeypatch):
    """Last: it registers a version on the server, as the team would after the move."""
    url, _ = server
    dst = MlflowClient(url)
    old = json.loads((workspace / "reports" / "train_run.json").read_text())["run_id"]
    new = {r.data.tags[COPIED_FROM_TAG]: r.info.run_id for r in _all_runs(dst)}[old]
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert tracking.get_run(old)["tags"][COPIED_FROM_TAG] == old
    with tracking.start_run("brats-seg", run_id=old) as run:  # as the evaluate stage reopens the training run
        run.log_metrics({"rescored": 0.5})
    assert run.run_id == new and dst.get_run(new).data.metrics["rescored"] == 0.5
    record = register_stage(RegisterParams(model_name=NAME), BaseParams())  # reports/train_run.json names `old`
    assert (record["version"], record["run_id"]) == ("4", new)
    assert _aliases(dst) == {"champion": "1", "challenger": "4"}
    with pytest.raises(UserError, match=f"has no run {'0' * 32}: the model was trained against another store"):
        tracking.get_run("0" * 32)
    # copying again after the team went on: nothing copied, nothing refused, the alias moved on the server stays
    counts = copy_store(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}", url)
    assert (counts["runs_copied"], counts["versions_copied"], counts["aliases"]) == (0, 0, 0)
    assert _aliases(dst) == {"champion": "1", "challenger": "4"}


def test_copy_store_without_a_destination_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as stopped:
        cli(["copy-store"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("error: brats-seg copy-store needs a destination: pass --to URI (e.g. --to "
                                       "http://127.0.0.1:5000) or set MLFLOW_TRACKING_URI to the team's tracking "
                                       "server.\n")


def test_a_missing_local_store_is_one_sentence_and_is_not_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli(["copy-store", "--to", "http://127.0.0.1:5000"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"error: there is no tracking store at sqlite:///mlflow/mlflow.db ({tmp_path / 'mlflow' / 'mlflow.db'} does "
        f"not exist): run brats-seg copy-store from the project folder, or give --from the store's URI.\n")
    assert not (tmp_path / "mlflow").exists()


def test_copying_a_store_onto_itself_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli(["copy-store", "--to", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"])
    assert capsys.readouterr().err == ("error: --from and --to both name sqlite:///mlflow/mlflow.db: give --to the "
                                       "store to copy into.\n")


def test_a_server_that_is_down_is_one_sentence(tmp_path, monkeypatch, capsys):
    uri, _ = _small_store(tmp_path / "local", "brats-seg", "brats-unet", 0)
    port = free_port()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli(["copy-store", "--from", uri, "--to", f"http://alice:secret@127.0.0.1:{port}"])
    assert capsys.readouterr().err == (f"error: the tracking server at http://alice:***@127.0.0.1:{port} is not "
                                       f"reachable (Connection refused): start it or fix MLFLOW_TRACKING_URI.\n")
