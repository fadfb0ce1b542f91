"""Copy a whole MLflow store into another (`brats-seg copy-store`): how a team moves its local store
(``sqlite:///mlflow/mlflow.db``, ``mlflow/artifacts``) onto its tracking server. The source is only read.

Copied: every active experiment (tags) and run (name, times, status, params, tags, every step of every metric, dataset
inputs, artifacts, logged models); every registered model with its versions under the same numbers, and its aliases.
Files go up through the destination's tracking URI (a server proxies them), byte for byte: a version's recorded
SHA-256 still hold (its MLmodel file still names the source's run and model ids).

Run ids change: a copy carries its source's run id in ``tracking.COPIED_FROM_TAG`` (a run id written before the move
finds it), and a version's ``run_id`` tag names the copied run. Run again, it copies what is missing only (a run copy
cut off half-way, still tagged ``COPYING_TAG``, is made again). A registered model that the destination holds with
versions not copied from this source is refused before anything is copied, never merged.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, LoggedModelInput, LoggedModelOutput, LoggedModelStatus, Metric, Param
from mlflow.exceptions import MlflowException

import mlflow
from brats_seg.errors import UserError, mask_credentials
from brats_seg.progress import progress
from brats_seg.registry import tracking

log = logging.getLogger(__name__)

COPYING_TAG = "brats_seg.copying_from_run"  # on a run copy while it is being made
MODEL_TAG = "brats_seg.copied_from_model"  # on a logged model copy: the source's model id
VERSION_TAG = "brats_seg.copied_from_version"  # on a version copy: which source version it is
REGISTRY_OWN_TAGS = ("mlflow.modelVersions",)  # written by the destination's registry when a version is created
_LOGGED_MODEL = re.compile(r"models:/(m-[0-9a-f]+)")
BATCH = {"metrics": 1000, "params": 100}  # MLflow's limits for one log_batch call


class Copy:
    """Both stores, and what maps source ids to destination ids as the copy goes."""

    def __init__(self, source: str, destination: str) -> None:
        self.source, self.destination = source, destination
        self.src, self.dst = mlflow.MlflowClient(source), mlflow.MlflowClient(destination)
        self.experiments, self.runs, self.models, self.roots = {}, {}, {}, {}  # source's -> destination's
        self.counts = dict.fromkeys(("experiments", "runs", "runs_copied", "versions", "versions_copied", "aliases"), 0)


def copy_store(source: str, destination: str | None = None) -> dict[str, int]:
    """Copy every experiment, run and registered model of the store at ``source`` into the store at
    ``destination`` (default: ``MLFLOW_TRACKING_URI``); returns what it found and what it copied."""
    destination = destination or os.environ.get("MLFLOW_TRACKING_URI")
    _check_stores(source, destination)
    job = Copy(source, destination)
    tracking.set_uri(destination)  # MLflow's registry finds a version's models:/ source through the global URI
    with tracking.no_progress_bars(), contextlib.redirect_stdout(io.StringIO()):  # mlflow's "View run" lines
        plans = _plan_registry(job)
        _copy_runs(job, _copy_experiments(job))
        for plan in plans:
            _copy_registered_model(job, *plan)
    log.info("copied %(runs_copied)d of %(runs)d runs, %(versions_copied)d of %(versions)d versions", job.counts)
    return job.counts


def describe(counts: dict[str, int], source: str, destination: str | None) -> str:
    """The command's one-line answer."""
    c, where = counts, mask_credentials(destination or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return (f"copied {c['runs_copied']} runs ({c['runs'] - c['runs_copied']} there already) of {c['experiments']} "
            f"experiments and {c['versions_copied']} model versions ({c['versions'] - c['versions_copied']} there "
            f"already), {c['aliases']} aliases set, from {mask_credentials(source)} to {where}")


def _check_stores(source: str, destination: str | None) -> None:
    if not destination:
        raise UserError("brats-seg copy-store needs a destination: pass --to URI (e.g. --to http://127.0.0.1:5000) "
                        "or set MLFLOW_TRACKING_URI to the team's tracking server.")
    same = [str(Path(u[10:]).resolve()) if u.startswith("sqlite:///") else u.rstrip("/") for u in (source, destination)]
    if same[0] == same[1]:
        raise UserError(f"--from and --to both name {mask_credentials(source)}: give --to the store to copy into.")
    path = source.removeprefix("sqlite:///")
    if source.startswith("sqlite:///") and not Path(path).is_file():
        raise UserError(f"there is no tracking store at {source} ({Path(path).absolute()} does not exist): run "
                        f"brats-seg copy-store from the project folder, or give --from the store's URI.")
    tracking.check_reachable(source)
    tracking.check_reachable(destination)


def _pages(search: Callable, *args: object, **kwargs: object) -> list:
    found, token = [], None
    while True:
        found.extend(page := search(*args, page_token=token, **kwargs))
        if not (token := page.token):
            return found


def _copy_experiments(job: Copy) -> list:
    """Each active experiment of the source, found by name in the destination or made there (with the source's
    tags; the destination chooses where its artifacts go)."""
    experiments = _pages(job.src.search_experiments)
    for experiment in experiments:
        found = job.dst.get_experiment_by_name(experiment.name)
        if found is not None and found.lifecycle_stage != "active":
            raise UserError(f"the experiment {experiment.name} is deleted in {mask_credentials(job.destination)}: "
                            f"restore it there (mlflow experiments restore) or remove it for good (mlflow gc), then "
                            f"copy again.")
        if found is None:
            job.experiments[experiment.experiment_id] = job.dst.create_experiment(experiment.name, tags=experiment.tags)
            continue
        job.experiments[experiment.experiment_id] = found.experiment_id
        for key in experiment.tags.keys() - found.tags.keys():
            job.dst.set_experiment_tag(found.experiment_id, key, experiment.tags[key])
    job.counts["experiments"] = len(experiments)
    return experiments


def _copy_runs(job: Copy, experiments: list) -> None:
    """Every active run of ``experiments`` not yet copied, oldest first, behind one progress bar."""
    todo = []
    for experiment in experiments:
        target = job.experiments[experiment.experiment_id]
        for run in _pages(job.dst.search_runs, [target]):
            tags = run.data.tags
            if COPYING_TAG in tags:  # first: a copy of a copy holds the source's COPIED_FROM_TAG until it is done
                log.warning("deleting the copy of run %s that an interrupted copy left half-made (%s); copying it "
                            "again", tags[COPYING_TAG], run.info.run_id)
                job.dst.delete_run(run.info.run_id)
            elif tracking.COPIED_FROM_TAG in tags:
                job.runs[tags[tracking.COPIED_FROM_TAG]] = run.info.run_id
        runs = _pages(job.src.search_runs, [experiment.experiment_id], order_by=["attributes.start_time ASC"])
        job.counts["runs"] += len(runs)
        todo.extend((run, target) for run in runs if run.info.run_id not in job.runs)
    for run, target in progress(todo, desc="copying runs", unit="run"):
        job.runs[run.info.run_id] = _copy_run(job, run, target)
        job.counts["runs_copied"] += 1


def _copy_run(job: Copy, run: mlflow.entities.Run, experiment_id: str) -> str:
    """One run, whole; marked copied (``COPIED_FROM_TAG``) only once everything of it is there."""
    info, data = run.info, run.data
    made = job.dst.create_run(experiment_id, start_time=info.start_time, run_name=info.run_name,
                              tags={**data.tags, COPYING_TAG: info.run_id})
    new = made.info.run_id
    outputs = run.outputs.model_outputs if run.outputs else []
    for output in outputs:
        _copy_logged_model(job, output.model_id, experiment_id, new)
    metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=job.models.get(m.model_id),
                      dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
               for key in sorted(data.metrics) for m in job.src.get_metric_history(info.run_id, key)]
    params = [Param(key, value) for key, value in sorted(data.params.items())]
    for kind, items in (("metrics", metrics), ("params", params)):
        for start in range(0, len(items), BATCH[kind]):
            job.dst.log_batch(new, **{kind: items[start:start + BATCH[kind]]})
    job.roots[info.artifact_uri] = made.info.artifact_uri  # a split table's source: a file of this or an earlier run
    datasets = [DatasetInput(Dataset(d.dataset.name, d.dataset.digest, d.dataset.source_type,
                                     _moved(job, d.dataset.source), d.dataset.schema, d.dataset.profile), d.tags)
                for d in run.inputs.dataset_inputs]
    models = [LoggedModelInput(job.models[m.model_id]) for m in run.inputs.model_inputs if m.model_id in job.models]
    if datasets or models:
        job.dst.log_inputs(new, datasets=datasets, models=models)
    if job.src.list_artifacts(info.run_id):
        with tempfile.TemporaryDirectory() as tmp:
            job.dst.log_artifacts(new, mlflow.artifacts.download_artifacts(run_id=info.run_id, dst_path=tmp,
                                                                           tracking_uri=job.source))
    if outputs:
        job.dst.log_outputs(new, [LoggedModelOutput(job.models[o.model_id], o.step) for o in outputs])
    if info.status == "RUNNING":
        log.warning("run %s is still running in the source: copied as it is now", info.run_id)
    else:
        job.dst.set_terminated(new, info.status, info.end_time)
    job.dst.set_tag(new, tracking.COPIED_FROM_TAG, info.run_id)
    job.dst.delete_tag(new, COPYING_TAG)
    return new


def _moved(job: Copy, source: str) -> str:
    return functools.reduce(lambda text, roots: text.replace(*roots), job.roots.items(), source)


def _copy_logged_model(job: Copy, model_id: str, experiment_id: str, run_id: str | None) -> str:
    """A logged model (MLflow 3 keeps a registered version's files there) with its files, for run ``run_id``."""
    model = job.src.get_logged_model(model_id)
    tags = {k: v for k, v in model.tags.items() if k not in REGISTRY_OWN_TAGS}
    made = job.dst.create_logged_model(experiment_id, name=model.name, source_run_id=run_id, params=model.params,
                                       tags={**tags, MODEL_TAG: model_id}, model_type=model.model_type)
    with tempfile.TemporaryDirectory() as tmp:
        job.dst.log_model_artifacts(made.model_id, mlflow.artifacts.download_artifacts(
            artifact_uri=model.artifact_location, dst_path=tmp, tracking_uri=job.source))
    if model.status in (LoggedModelStatus.READY, LoggedModelStatus.FAILED):  # not PENDING: a model cut off
        job.dst.finalize_logged_model(made.model_id, model.status)
    job.models[model_id] = made.model_id
    return made.model_id


def _plan_registry(job: Copy) -> list[tuple]:
    """For each registered model of the source: its versions, and ``{number: VERSION_TAG}`` of the destination's
    (None when it lacks the model). Refused, before anything is copied, when the destination holds versions of it that
    are not copies of these and some of these are still to copy."""
    plans = []
    for model in _pages(job.src.search_registered_models):
        versions = sorted(_pages(job.src.search_model_versions, f"name = '{model.name}'"), key=lambda v: int(v.version))
        expected = {int(v.version): _mark(v) for v in versions}
        try:
            found = {int(v.version): v.tags.get(VERSION_TAG)
                     for v in _pages(job.dst.search_model_versions, f"name = '{model.name}'")}
            job.dst.get_registered_model(model.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            found = None
        foreign = sorted(n for n, mark in (found or {}).items()  # not a number the source deleted, taken when cut off
                         if mark != expected.get(n) and (n in expected or mark not in expected.values()))
        if foreign and any((found or {}).get(n) != mark for n, mark in expected.items()):
            raise UserError(f"the registry at {mask_credentials(job.destination)} already holds {model.name} with "
                            f"version{'s' if len(foreign) > 1 else ''} {', '.join(map(str, foreign))} that "
                            f"{'are' if len(foreign) > 1 else 'is'} not a copy of {mask_credentials(job.source)}'s, "
                            f"and copying would renumber the versions; rename or delete {model.name} there, or copy "
                            f"into another store.")
        plans.append((model, versions, found))
    return plans


def _copy_registered_model(job: Copy, model: mlflow.entities.model_registry.RegisteredModel, versions: list,
                           found: dict[int, str | None] | None) -> None:
    """The versions of a registered model that the destination lacks, each under its own number, then the aliases
    that the destination does not set yet (where the team moved one on the server since, it stays)."""
    expected = {int(v.version): _mark(v) for v in versions}
    if found is None:
        job.dst.create_registered_model(model.name, tags=model.tags, description=model.description)
    for number, mark in (found or {}).items():
        if number not in expected and mark in expected.values():  # a number the source deleted, taken when cut off
            job.dst.delete_model_version(model.name, str(number))
    missing = [v for v in versions if (found or {}).get(int(v.version)) != expected[int(v.version)]]
    for version in missing:
        _copy_version(job, version)
    aliases = job.dst.get_registered_model(model.name).aliases
    for alias, number in model.aliases.items():
        if alias not in aliases:
            job.dst.set_registered_model_alias(model.name, alias, str(number))
            job.counts["aliases"] += 1
    job.counts["versions"] += len(versions)
    job.counts["versions_copied"] += len(missing)


def _mark(version: mlflow.entities.model_registry.ModelVersion) -> str:
    return f"{version.name} v{version.version} of run {version.run_id}"


def _copy_version(job: Copy, version: mlflow.entities.model_registry.ModelVersion) -> None:
    """Create the version under its own number: numbers the source deleted are taken and given up again."""
    run = job.runs.get(version.run_id) if version.run_id else None
    tags = {**version.tags, VERSION_TAG: _mark(version)}
    if run is not None and tags.get("run_id") == version.run_id:
        tags["run_id"] = run
    source = _version_source(job, version, run)
    logged = _LOGGED_MODEL.fullmatch(source)  # a server takes such a source only with its model id
    while True:
        made = job.dst.create_model_version(version.name, source, run_id=run, tags=tags, await_creation_for=0,
                                            description=version.description, model_id=logged and logged.group(1))
        if int(made.version) >= int(version.version):
            break
        job.dst.delete_model_version(version.name, made.version)
    if int(made.version) != int(version.version):
        raise UserError(f"the registry at {mask_credentials(job.destination)} numbered the copy of {version.name} "
                        f"v{version.version} as v{made.version}, since it held deleted versions of {version.name}; "
                        f"delete the registered model {version.name} there, then copy again.")


def _version_source(job: Copy, version: mlflow.entities.model_registry.ModelVersion, run: str | None) -> str:
    """Where the copied version's files are: the copied logged model, or the same path in the copied run."""
    logged = _LOGGED_MODEL.fullmatch(version.source)
    if logged:
        return f"models:/{_logged_model_there(job, logged.group(1), run)}"
    if run is not None and version.source.startswith(f"runs:/{version.run_id}/"):
        return version.source.replace(version.run_id, run, 1)
    root = job.src.get_run(version.run_id).info.artifact_uri if run is not None else None
    if root and version.source.startswith(root):
        return job.dst.get_run(run).info.artifact_uri + version.source[len(root):]
    log.warning("%s v%s keeps its source %s: not in the copied store", version.name, version.version, version.source)
    return version.source


def _logged_model_there(job: Copy, model_id: str, run: str | None) -> str:
    """The destination's copy of logged model ``model_id`` (of run ``run``): made by this copy, found by its tag, or
    made now (a model no copied run lists as its output)."""
    if model_id in job.models:
        return job.models[model_id]
    for found in _pages(job.dst.search_logged_models, sorted(set(job.experiments.values())),
                        filter_string=f"tags.`{MODEL_TAG}` = '{model_id}'"):
        if run is None or found.source_run_id == run:
            job.models[model_id] = found.model_id
            return found.model_id
    experiment = job.experiments[job.src.get_logged_model(model_id).experiment_id]
    return _copy_logged_model(job, model_id, experiment, run)
