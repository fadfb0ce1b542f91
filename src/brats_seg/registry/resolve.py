"""Which model: a model file, or a version of the MLflow registry checked against the SHA-256 it recorded."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from brats_seg.errors import UserError
from brats_seg.inference.bundle import ModelBundle, load_model, pick_device

DEFAULT_MODEL = "models:/brats-unet@champion"


def resolve_model(model: str | None, device: str = "auto") -> ModelBundle:
    """A model from a file (``models/unet.pt``) or the MLflow registry (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``)."""
    dev = pick_device(device)
    model = model or DEFAULT_MODEL
    if Path(model).is_file():
        return load_model(model, dev)
    if not model.startswith("models:/"):
        what = "is a folder, not a model file" if Path(model).is_dir() else "does not exist"
        raise UserError(f"--model {model} {what}; pass a model file (models/unet.pt) or a registry URI such as "
                        f"{DEFAULT_MODEL}.")
    return _load_registered(model, dev)


def _load_registered(uri: str, device: torch.device) -> ModelBundle:
    """The model file of a registry version, downloaded with every file of the version and checked against the
    SHA-256 the registry recorded (:func:`brats_seg.registry.versions.fetch_registered_model`), then read by
    :func:`load_model` (``weights_only``: never unpickles; crafted weights are refused naming ``uri``).

    MLflow is imported here, not with the module: `brats-seg predict --model models/unet.pt` and evaluate's model
    file never need it, and it is a second of every start."""
    from brats_seg.registry import tracking, versions

    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder, version = versions.fetch_registered_model(uri, tmp)
        except UserError:
            raise  # not there, not checkable or tampered with: its own sentence
        except Exception as exc:  # noqa: BLE001 - mlflow raises several kinds for "not there"
            raise UserError(f"cannot load {uri} from the registry at {tracking.shown_uri()} ({str(exc)[:120]}); "
                            f"promote a model first (brats-seg promote) or pass --model models/unet.pt.") from None
        weights = folder / versions.WEIGHTS_IN_VERSION
        try:
            bundle = load_model(weights, device)
        except UserError as exc:
            raise UserError(str(exc).replace(str(weights), f"the weights file of {uri}")) from None
    name = versions.parse_model_uri(uri)["name"]
    return dataclasses.replace(bundle, origin=f"{name} v{version} ({uri})")


