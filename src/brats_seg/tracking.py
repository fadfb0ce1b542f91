"""MLflow tracking: the only module that imports mlflow.

Default store ``sqlite:///mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts``; the
``MLFLOW_TRACKING_URI`` environment variable (read when a run starts, not at import) points everything at
a tracking server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

import mlflow
from brats_seg.errors import mask_credentials
from brats_seg.io.atomic import file_sha256

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
    import urllib.parse

    from brats_seg.errors import UserError

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


def _set_uri(uri: str) -> None:
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
    _set_uri(uri)
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
        """Log who is in which split: for each split of ``table`` (columns case_id, patient_id, split and, where
        known, image_sha256: the digest of the case's decoded images, so that a renamed copy is recognised), its rows
        as the artifact ``splits/<split>.csv`` and an MLflow dataset input named ``<split>-split`` with
        context training / validation / testing, whose source is that artifact. Returns ``{split: digest}``.

        Read back with :func:`split_tables`; this is what the promotion gate and `brats-seg lineage --case` use
        to know which patients a model was trained, validated and tested on."""
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


# Split tables of a training run (Run.log_split_tables, split_tables): split -> MLflow dataset context.
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
SPLIT_COLUMNS = ("case_id", "patient_id", "split")
IMAGE_COLUMN = "image_sha256"  # in split tables logged since images were identified by content
SPLIT_FOLDER = "splits"
ARTIFACT_TAG = "brats_seg.artifact"
CONTEXT_TAG = "mlflow.data.context"


def _log_table_input(frame: pd.DataFrame, artifact_uri: str, name: str, digest: str, context: str,
                     tags: dict[str, str]) -> None:
    """Log ``frame`` as a dataset input of the active run whose source is the run artifact holding its rows.
    A tracking server's proxied artifacts (``mlflow-artifacts:`` URIs) are no dataset source MLflow can resolve:
    then the source is left to MLflow's default, and the input's artifact tag still names the rows (what
    :func:`split_tables` reads)."""
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
        run_id = _require_run(run_id).info.run_id  # a run copied from another store goes on in its copy
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


# `brats-seg copy-store` (brats_seg.copy_store) tags every run it copies into another store with the run's id in the
# store it came from: a run id written before the move (reports/train_run.json, registered.json) finds its copy.
COPIED_FROM_TAG = "brats_seg.copied_from_run"


def _require_run(run_id: str) -> mlflow.entities.Run:
    """The run ``run_id`` of the store in force, or the one copied from it (``COPIED_FROM_TAG``) when it was moved
    here from another store; a UserError sentence with the fix when the store holds neither (the model was trained
    against another store: a local one, before a team server was set up)."""
    from brats_seg.errors import UserError

    _set_uri(tracking_uri())
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
    run = _require_run(run_id)
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


# --- model registry ---------------------------------------------------------------------------------

def _client() -> mlflow.MlflowClient:
    _set_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri())


# A registered version (brats_seg.registered_model): the ONNX graph, MLflow's own files (MLmodel, environment,
# input example) and the train stage's model file as an extra file. The registry records the SHA-256 of every
# stored file as version tags "sha256/<path in the version>", and marks a registration complete once its alias
# is set. MLflow writes DOWNLOAD_RECORD into every downloaded copy: it is not stored, so it is not checked.
WEIGHTS_NAME = "weights.pt"
WEIGHTS_IN_VERSION = f"extra_files/{WEIGHTS_NAME}"
DIGEST_PREFIX = "sha256/"
DOWNLOAD_RECORD = "registered_model_meta"
REGISTRATION_TAG = "brats_seg.registration"


def register_model(run_id: str, graph: bytes, model_file: str | Path, name: str, input_example: np.ndarray,
                   output_example: np.ndarray, metadata: dict, tags: dict[str, str], alias: str) -> dict:
    """Log the ONNX ``graph`` in run ``run_id`` with MLflow's onnx flavor (signature, input example, metadata,
    and ``model_file`` as the extra file ``extra_files/weights.pt``), register a new version of ``name`` with
    ``tags`` and the SHA-256 of every file stored, point ``alias`` at it and mark it complete.

    A version of this run left unfinished by a killed registration (digests recorded, no alias yet) is adopted
    when it holds this very model file, instead of registering the model twice."""
    client = _client()
    run_id = _require_run(run_id).info.run_id  # the copy of a run that came from another store (copy-store)
    adopted = _adopt_unfinished(client, name, run_id, file_sha256(model_file))
    if adopted is None:
        model_uri = _log_onnx(run_id, graph, model_file, input_example, output_example, metadata)
        with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
            stored = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                                         tracking_uri=tracking_uri())
            digests = {f"{DIGEST_PREFIX}{path}": sha for path, sha in file_digests(stored).items()}
        with contextlib.redirect_stderr(io.StringIO()):  # mlflow prints two lines of its own; the stage logs one
            version = str(mlflow.register_model(model_uri, name, tags={**tags, **digests}).version)
    else:
        version = adopted
        set_version_tags(name, version, tags)
        log.warning("adopted version %s of %s, left without its alias by an interrupted registration", version, name)
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, REGISTRATION_TAG, "complete")
    return {"name": name, "version": version, "alias": alias, "run_id": run_id,
            "model_uri": f"models:/{name}/{version}"}


def _log_onnx(run_id: str, graph: bytes, model_file: str | Path, input_example: np.ndarray,
              output_example: np.ndarray, metadata: dict) -> str:
    """Log the graph as a model of run ``run_id``; returns its URI."""
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    requirements = [f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}",
                    f"mlflow=={mlflow.__version__}"]
    onnx_log = logging.getLogger("mlflow.onnx")  # its check of the input example on a CPU-only onnxruntime says
    level = onnx_log.level                        # the CUDA provider is missing: true, and no news to anyone here
    onnx_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            weights = Path(tmp) / WEIGHTS_NAME
            weights.write_bytes(Path(model_file).read_bytes())
            info = mlflow.onnx.log_model(onnx.load_from_string(graph), name="model", input_example=input_example,
                                         signature=infer_signature(input_example, output_example),
                                         metadata=metadata, extra_files=[str(weights)], save_as_external_data=False,
                                         pip_requirements=requirements)
    finally:
        onnx_log.setLevel(level)
    return info.model_uri


def _adopt_unfinished(client: mlflow.MlflowClient, name: str, run_id: str, weights_sha: str) -> str | None:
    """The version of ``name`` from run ``run_id`` that a killed registration left unfinished, when it holds the
    model file with SHA-256 ``weights_sha``; None when there is none."""
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    for mv in sorted(found, key=lambda v: int(v.version)):
        tags = dict(mv.tags)
        if tags.get(REGISTRATION_TAG) != "complete" and tags.get(f"{DIGEST_PREFIX}{WEIGHTS_IN_VERSION}") == weights_sha:
            return str(mv.version)
    return None


def file_digests(folder: str | Path) -> dict[str, str]:
    """``{path relative to folder: sha256}`` of every file under a downloaded model version (links included, as
    the files they point at), without the download record MLflow adds to every copy."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() != DOWNLOAD_RECORD}


def unverified_files(found: dict[str, str], expected: dict[str, str]) -> str | None:
    """What differs between a version's files (``found``) and the digests the registry recorded
    (``expected``), as a clause; None when they are the same files."""
    for path in sorted(expected.keys() | found.keys()):
        if path not in found:
            return f"its file {path} is missing"
        if path not in expected:
            return f"it holds a file {path} that was not registered"
        if found[path] != expected[path]:
            return (f"its file {path} is not the registered one (SHA-256 {found[path][:12]}..., registered "
                    f"{expected[path][:12]}...)")
    return None


def model_version(name: str, version: str | None = None, alias: str | None = None) -> dict | None:
    """``{"version", "run_id", "tags", "aliases", "source"}`` of a model version, or None when absent."""
    client = _client()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags),
            "aliases": list(mv.aliases), "source": mv.source}


def set_alias(name: str, alias: str, version: str) -> None:
    _client().set_registered_model_alias(name, alias, version)


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tags on a finished run (e.g. the git commit that recorded its inputs after it ended)."""
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def parse_model_uri(uri: str) -> dict:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ``{"name", "alias"|"version"}``."""
    if not uri.startswith("models:/"):
        raise ValueError(f"not a registry URI: {uri}")
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return {"name": name, "alias": alias}
    name, _, version = rest.partition("/")
    return {"name": name, "version": version or None}


def fetch_registered_model(uri: str, dst: str | Path) -> tuple[Path, str]:
    """Download the version behind a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) into the
    folder ``dst`` and check every file against the SHA-256 the registry recorded at registration; returns the
    folder and the version number. Raises UserError with one sentence for a version that is not there, that has
    no recorded digests (registered by an older brats-seg), or whose files differ from them: nothing of it is read
    before that.
    Its weights (``WEIGHTS_IN_VERSION``) are for :func:`brats_seg.inference.load_model` (``weights_only``)."""
    from brats_seg.errors import UserError

    parts = parse_model_uri(uri)
    version = model_version(parts["name"], version=parts.get("version"), alias=parts.get("alias"))
    if version is None:
        raise UserError(f"{uri} is not in the registry at {shown_uri()}; promote a model first (brats-seg promote) "
                        f"or pass --model models/unet.pt.")
    expected = {k[len(DIGEST_PREFIX):]: v for k, v in version["tags"].items() if k.startswith(DIGEST_PREFIX)}
    which = f"{uri} (version {version['version']})"
    if not expected:
        raise UserError(f"{which} was registered without the SHA-256 of its files (by an older brats-seg or another "
                        f"tool), so brats-seg cannot check it before use; register the model again (dvc repro "
                        f"register) and promote the new version.")
    with _no_progress_bars():  # a few files: the caller logs what it loaded
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=version["source"], dst_path=str(dst),
                                                          tracking_uri=tracking_uri()))
    problem = unverified_files(file_digests(folder), expected)
    if problem:
        raise UserError(f"{which} was refused: {problem}, so the artifact store was changed after registration and "
                        f"nothing of it was loaded; restore the version's files from a backup of the artifact store, "
                        f"or register and promote another model (dvc repro register, brats-seg promote).")
    return folder, version["version"]


def split_tables(run_id: str) -> pd.DataFrame | None:
    """Who was in which split of a training run: one row per case (case_id, patient_id, split, image_sha256: empty
    where the run did not record it), read from the run's split dataset inputs (:meth:`Run.log_split_tables`);
    None when the run logged none (older runs)."""
    _set_uri(tracking_uri())
    paths = [next((t.value for t in d.tags if t.key == ARTIFACT_TAG), None)
             for d in mlflow.get_run(run_id).inputs.dataset_inputs
             if any(t.key == CONTEXT_TAG and t.value in SPLIT_CONTEXTS.values() for t in d.tags)]
    paths = [p for p in paths if p]
    if not paths:
        return None
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        frames = [pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=p, dst_path=tmp,
                                                                   tracking_uri=tracking_uri()), dtype=str)
                  for p in sorted(set(paths))]
    return pd.concat(frames, ignore_index=True).reindex(columns=[*SPLIT_COLUMNS, IMAGE_COLUMN]).fillna("")


def run_table(run_id: str, path: str) -> pd.DataFrame | None:
    """A CSV artifact of a run (e.g. ``eval_cases.csv``) as a frame; None when the run holds no such file."""
    _set_uri(tracking_uri())
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=tracking_uri())
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return pd.read_csv(local)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
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


def model_versions(name: str | None = None) -> list[dict]:
    """Every registered version (of model ``name``, or of every registered model), as :func:`model_version`
    gives them, ordered by name and version number."""
    client = _client()
    query = None if name is None else f"name = '{name}'"
    found, token = [], None
    while True:
        page = client.search_model_versions(query, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    out = [model_version(mv.name, version=str(mv.version)) for mv in found]  # aliases are filled in here
    return sorted((v for v in out if v is not None), key=lambda v: (v["name"], int(v["version"])))


# --- the audit trail: one run per promotion decision, never overwritten ------------------------------------

AUDIT_EXPERIMENT = "brats-seg-audit"


def log_decision_record(model_name: str, version: str, record: dict[str, str]) -> str:
    """Write a promotion decision as a new, finished run of the ``brats-seg-audit`` experiment (its tags are the
    record, with the model and version); returns the run id. Nothing earlier is changed: the trail only grows."""
    client = _client()
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is None:
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        location = Path(DEFAULT_ARTIFACTS).resolve().as_uri() if local else None
        experiment_id = client.create_experiment(AUDIT_EXPERIMENT, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    else:
        experiment_id = experiment.experiment_id
    tags = {**record, "model": model_name, "version": str(version)}
    with contextlib.redirect_stdout(io.StringIO()):  # against a server mlflow prints the run's URL: not ours to say
        run = client.create_run(experiment_id, run_name=f"{model_name} v{version}: {record.get('decision', '?')}",
                                tags=tags)
        client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def decision_records(model_name: str, version: str | None = None) -> list[dict]:
    """Every promotion decision recorded for ``model_name`` (or one version), oldest first: the record's tags
    with ``time`` (UTC, ISO 8601) and ``record_id`` (its run)."""
    client = _client()
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is None:
        return []
    query = f"tags.model = '{model_name}'" + ("" if version is None else f" and tags.version = '{version}'")
    found, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    from datetime import datetime, timezone

    return [{**{k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}, "record_id": run.info.run_id,
             "time": datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).isoformat(timespec="seconds")}
            for run in found]
