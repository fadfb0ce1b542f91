"""The model registry: registering a run's ONNX graph as a version with the SHA-256 of every file, reading
versions and aliases, fetching a version checked against its digests, and the promotion audit trail's records.

A registered version (:mod:`brats_seg.registry.registered_model`): the ONNX graph, MLflow's own files (MLmodel,
environment, input example) and the train stage's model file as an extra file. The registry records the SHA-256
of every stored file as version tags ``sha256/<path in the version>``, and marks a registration complete once its
alias is set. MLflow writes DOWNLOAD_RECORD into every downloaded copy: it is not stored, so it is not checked.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mlflow
from brats_seg.errors import UserError
from brats_seg.io.atomic import file_sha256
from brats_seg.registry.tracking import (
    ARTIFACT_TAG,
    CONTEXT_TAG,
    DEFAULT_ARTIFACTS,
    EXPERIMENT_KIND_TAG,
    IMAGE_COLUMN,
    MODEL_DEVELOPMENT,
    SPLIT_COLUMNS,
    SPLIT_CONTEXTS,
    mlflow_client,
    no_progress_bars,
    require_run,
    set_uri,
    shown_uri,
    tracking_uri,
)

log = logging.getLogger(__name__)

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
    client = mlflow_client()
    run_id = require_run(run_id).info.run_id  # the copy of a run that came from another store (copy-store)
    adopted = _adopt_unfinished(client, name, run_id, file_sha256(model_file))
    if adopted is None:
        model_uri = _log_onnx(run_id, graph, model_file, input_example, output_example, metadata)
        with tempfile.TemporaryDirectory() as tmp, no_progress_bars():
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
    client = mlflow_client()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags),
            "aliases": list(mv.aliases), "source": mv.source}


def set_alias(name: str, alias: str, version: str) -> None:
    mlflow_client().set_registered_model_alias(name, alias, version)


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    client = mlflow_client()
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
    Its weights (``WEIGHTS_IN_VERSION``) are for :func:`brats_seg.inference.bundle.load_model` (``weights_only``)."""

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
    with no_progress_bars():  # a few files: the caller logs what it loaded
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=version["source"], dst_path=str(dst),
                                                          tracking_uri=tracking_uri()))
    problem = unverified_files(file_digests(folder), expected)
    if problem:
        raise UserError(f"{which} was refused: {problem}, so the artifact store was changed after registration and "
                        f"nothing of it was loaded; restore the version's files from a backup of the artifact store, "
                        f"or register and promote another model (dvc repro register, brats-seg promote).")
    return folder, version["version"]


def model_versions(name: str | None = None) -> list[dict]:
    """Every registered version (of model ``name``, or of every registered model), as :func:`model_version`
    gives them, ordered by name and version number."""
    client = mlflow_client()
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


AUDIT_EXPERIMENT = "brats-seg-audit"


def log_decision_record(model_name: str, version: str, record: dict[str, str]) -> str:
    """Write a promotion decision as a new, finished run of the ``brats-seg-audit`` experiment (its tags are the
    record, with the model and version); returns the run id. Nothing earlier is changed: the trail only grows."""
    client = mlflow_client()
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
    client = mlflow_client()
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


def split_tables(run_id: str) -> pd.DataFrame | None:
    """Who was in which split of a training run: one row per case (case_id, patient_id, split, image_sha256: empty
    where the run did not record it), read from the run's split dataset inputs (:meth:`Run.log_split_tables`);
    None when the run logged none (older runs)."""
    set_uri(tracking_uri())
    paths = [next((t.value for t in d.tags if t.key == ARTIFACT_TAG), None)
             for d in mlflow.get_run(run_id).inputs.dataset_inputs
             if any(t.key == CONTEXT_TAG and t.value in SPLIT_CONTEXTS.values() for t in d.tags)]
    paths = [p for p in paths if p]
    if not paths:
        return None
    with tempfile.TemporaryDirectory() as tmp, no_progress_bars():
        frames = [pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=p, dst_path=tmp,
                                                                   tracking_uri=tracking_uri()), dtype=str)
                  for p in sorted(set(paths))]
    return pd.concat(frames, ignore_index=True).reindex(columns=[*SPLIT_COLUMNS, IMAGE_COLUMN]).fillna("")


def run_table(run_id: str, path: str) -> pd.DataFrame | None:
    """A CSV artifact of a run (e.g. ``eval_cases.csv``) as a frame; None when the run holds no such file."""
    set_uri(tracking_uri())
    with tempfile.TemporaryDirectory() as tmp, no_progress_bars():
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=tracking_uri())
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return pd.read_csv(local)
