"""MLflow tracking: the store, experiments and runs (the model registry is :mod:`brats_seg.registry.versions`).
Default store ``sqlite:///mlflow/mlflow.db``, artifacts under ``mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` (read
when a run starts, not at import) points everything at a tracking server instead."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

import mlflow
from brats_seg.errors import UserError, mask_credentials

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow/mlflow.db"
DEFAULT_ARTIFACTS = "mlflow/artifacts"


def tracking_uri() -> str:
    """The tracking URI in force: ``MLFLOW_TRACKING_URI`` or the local sqlite store (made absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    Path("mlflow").mkdir(exist_ok=True)
    return f"sqlite:///{Path('mlflow/mlflow.db').resolve()}"


def shown_uri() -> str:
    """The tracking URI in force as it may be printed or logged: a password in it reads ``user:***@``."""
    return mask_credentials(tracking_uri())


# How long a tracking server may take to accept a connection. MLflow itself retries a request for minutes
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT), which suits a busy server, not an absent one.
PROBE_TIMEOUT_S = 5.0
_reached: set[str] = set()


def check_reachable(uri: str) -> None:
    """Raise UserError within about PROBE_TIMEOUT_S when ``uri`` is an HTTP(S) server that accepts no connection."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or uri in _reached:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"the tracking server at {mask_credentials(uri)} is not reachable ({why}): start it or fix "
                        f"MLFLOW_TRACKING_URI.") from None
    _reached.add(uri)


def set_uri(uri: str) -> None:
    """mlflow.set_tracking_uri without its side effect of exporting MLFLOW_TRACKING_URI: a long-running
    process (a served flow, a test session) would otherwise keep the first store for good, and pass it to
    every `dvc repro` it starts. A server that accepts no connection is one sentence, at once."""
    check_reachable(uri)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# MLflow 3's UI opens an experiment on its GenAI traces page unless this tag says the experiment is classic
# model development; then it opens on the runs table.
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def use_experiment(name: str) -> str:
    """Point mlflow at the tracking URI and the experiment ``name`` (created if needed), tagged as model
    development so that the UI opens on its runs; returns its id."""
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri()
    set_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_DEVELOPMENT:  # made before this tag was set
            mlflow.MlflowClient(uri).set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                                         MODEL_DEVELOPMENT)
        mlflow.set_experiment(name)
        return experiment.experiment_id
    location = Path(DEFAULT_ARTIFACTS).resolve().as_uri() if local else None
    experiment_id = mlflow.create_experiment(name, artifact_location=location,
                                             tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    mlflow.set_experiment(name)
    return experiment_id


class Run:
    """An active MLflow run: thin methods so that library code never touches mlflow."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_params(self, params: dict) -> None:
        mlflow.log_params(param_strings(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v}, step=step)  # NaN skipped

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_dataset(self, frame: pd.DataFrame, name: str, source: str, digest: str, context: str) -> None:
        with warnings.catch_warnings():  # schema hints about integer columns and source resolution
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest[:36])
            mlflow.log_input(dataset, context=context)

    def log_split_tables(self, table: pd.DataFrame) -> dict[str, str]:
        """Log who is in which split (columns case_id, patient_id, split and, where known, image_sha256, which
        recognises a renamed copy): per split, the artifact ``splits/<split>.csv`` and a dataset input
        ``<split>-split`` (context training / validation / testing) whose source is it. Returns ``{split: digest}``;
        read back by :func:`brats_seg.registry.versions.split_tables` (the gate, `brats-seg lineage --case`)."""
        digests = {}
        for split, context in SPLIT_CONTEXTS.items():
            columns = [c for c in (*SPLIT_COLUMNS, IMAGE_COLUMN) if c in table.columns]
            rows = table.loc[table["split"] == split, columns].sort_values(["patient_id", "case_id"])
            text = rows.to_csv(index=False)
            digests[split] = hashlib.sha256(text.encode()).hexdigest()
            path = f"{SPLIT_FOLDER}/{split}.csv"
            mlflow.log_text(text, path)
            _log_table_input(rows.reset_index(drop=True), mlflow.get_artifact_uri(path), f"{split}-split",
                             digests[split], context, {ARTIFACT_TAG: path, "n_cases": str(len(rows)),
                                                       "n_patients": str(rows["patient_id"].nunique())})
        return digests

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def log_dict(self, data: dict, name: str) -> None:
        mlflow.log_dict(data, name)


# Split tables of a training run (Run.log_split_tables, versions.split_tables): split -> dataset context.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
SPLIT_COLUMNS = ("case_id", "patient_id", "split")
IMAGE_COLUMN = "image_sha256"  # in split tables logged since images were identified by content
SPLIT_FOLDER = "splits"
ARTIFACT_TAG = "brats_seg.artifact"
CONTEXT_TAG = "mlflow.data.context"


def _log_table_input(frame: pd.DataFrame, artifact_uri: str, name: str, digest: str, context: str,
                     tags: dict[str, str]) -> None:
    """Log ``frame`` as a dataset input of the active run whose source is the run artifact holding its rows; a
    server's proxied artifacts (``mlflow-artifacts:``) are no source MLflow resolves: its tag still names them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            dataset = mlflow.data.from_pandas(frame, source=artifact_uri, name=name, digest=digest[:36])
        except mlflow.exceptions.MlflowException:
            dataset = mlflow.data.from_pandas(frame, name=name, digest=digest[:36])
        mlflow.log_input(dataset, context=context, tags=tags)


# Tags that say which process holds a run, so that a run whose process was killed can be closed later.
HOST_TAG, PID_TAG = "brats_seg.host", "brats_seg.pid"


@contextlib.contextmanager
def start_run(experiment: str, run_id: str | None = None, run_name: str | None = None) -> Iterator[Run]:
    """Start (or, with ``run_id``, reopen) a run; it ends FINISHED, or FAILED if the block raises.

    Runs of this host left RUNNING by a process that no longer exists (killed, out of memory) are closed
    as KILLED first, so that the tracking store never shows a dead run as running.
    """
    close_orphaned_runs(experiment)
    if run_id is not None:
        run_id = require_run(run_id).info.run_id  # a run copied from another store goes on in its copy
    with mlflow.start_run(run_id=run_id, run_name=run_name) as active:
        mlflow.set_tags({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})
        yield Run(active.info.run_id)


def close_orphaned_runs(experiment: str) -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment`` started on this host by a process that is gone;
    returns their ids. Runs of other hosts are left alone: their processes cannot be checked from here."""
    experiment_id = use_experiment(experiment)
    client = mlflow.MlflowClient(tracking_uri())
    host = socket.gethostname().replace("'", "")
    running = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    closed = []
    for run in running:
        pid = int(run.data.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not _process_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# `brats-seg copy-store` (brats_seg.registry.copy_store) tags every run it copies into another store with the
# run's id in the
# store it came from: a run id written before the move (reports/train_run.json, registered.json) finds its copy.
COPIED_FROM_TAG = "brats_seg.copied_from_run"


def require_run(run_id: str) -> mlflow.entities.Run:
    """The run ``run_id`` of the store in force, or the one copied from it (``COPIED_FROM_TAG``) when it was moved
    here from another store; a UserError sentence with the fix when the store holds neither (the model was trained
    against another store: a local one, before a team server was set up)."""
    set_uri(tracking_uri())
    client = mlflow.MlflowClient(tracking_uri())
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    copies = client.search_runs(experiments, f"tags.`{COPIED_FROM_TAG}` = '{run_id}'", max_results=2) \
        if experiments and run_id.isalnum() else []
    if len(copies) == 1:
        log.info("run %s is run %s here (copied from another store)", run_id, copies[0].info.run_id)
        return copies[0]
    raise UserError(f"the tracking store at {shown_uri()} has no run {run_id}: the model was trained against another "
                    f"store; train it again against this one (dvc repro -f train), or set MLFLOW_TRACKING_URI to the "
                    f"store that holds the run.")


def get_run(run_id: str) -> dict:
    """A run's params, metrics and tags as plain dicts (a UserError when the store does not hold it)."""
    run = require_run(run_id)
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "status": run.info.status, "inputs": [d.dataset.digest for d in run.inputs.dataset_inputs]}


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.tracking.MlflowClient(tracking_uri())
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def param_strings(params: dict) -> dict[str, str]:
    """Nested parameters as MLflow param strings with dotted keys; lists and tuples as JSON, so that a
    value read back from params.yaml and one logged from a stage's outputs compare equal."""
    return {k: json.dumps(list(v)) if isinstance(v, (list, tuple)) else str(v) for k, v in _flatten(params).items()}


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out



def mlflow_client() -> mlflow.MlflowClient:
    set_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri())


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tags on a finished run (e.g. the git commit that recorded its inputs after it ended)."""
    client = mlflow_client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar for every artifact it downloads; reading a few small tables per version
    (`brats-seg lineage --case` reads every version's) or one model file should not fill the terminal."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
