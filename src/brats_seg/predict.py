"""Segment new cases: binary whole-tumour masks on each input's own grid.

Cases may use any naming the download stage recognises. Preprocessing is the slice stage's own
(:func:`brats_seg.data.preprocess.preprocess_case`) with the parameters stored with the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from brats_seg.data.layouts import CaseSource, discover_cases
from brats_seg.data.preprocess import preprocess_case, restore_volume
from brats_seg.errors import UserError
from brats_seg.inference import ModelBundle, load_model, pick_device, predict_slices
from brats_seg.io.nifti import read_meta, read_nifti, write_like

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models:/brats-unet@champion"


def resolve_model(model: str | None, device: str = "auto") -> ModelBundle:
    """A model from a file (``models/unet.pt``) or the MLflow registry (``models:/NAME@ALIAS``)."""
    dev = pick_device(device)
    model = model or DEFAULT_MODEL
    if Path(model).is_file():
        return load_model(model, dev)
    if not model.startswith(("models:/", "runs:/")):
        raise UserError(f"--model {model} is neither a model file nor a models:/NAME@ALIAS URI.")
    from brats_seg import tracking

    try:
        net, meta = tracking.load_registered_model(model, str(dev))
    except Exception as exc:  # noqa: BLE001 - mlflow raises several kinds for "not there"
        raise UserError(f"cannot load {model} from the registry at {tracking.tracking_uri()} ({str(exc)[:120]}); "
                        f"promote a model first (brats-seg promote) or pass --model models/unet.pt.") from None
    return ModelBundle(net.eval(), tuple(meta["regions"]), dict(meta["slice"]), float(meta.get("threshold", 0.5)))


def predict_case(case: CaseSource, bundle: ModelBundle, out_dir: str | Path, batch_size: int = 256) -> dict:
    """Write ``<case>_mask.nii.gz`` (uint8, 0/1) on the grid of the case's first modality."""
    modalities = tuple(bundle.slice_params["modalities"])
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise UserError(f"case {case.case_id} has no {', '.join(missing)} image; the model needs "
                        f"{', '.join(modalities)} (found {', '.join(sorted(case.images)) or 'none'}).")
    volumes, affine = [], None
    for m in modalities:
        path, channel = case.images[m]
        try:
            data, meta = read_nifti(path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault, said in one sentence
            raise UserError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); check or replace "
                            f"the file (a truncated download is the usual cause).") from None
        volumes.append(data[..., channel] if channel is not None else data)
        affine = meta.affine if affine is None else affine
    reference = case.images[modalities[0]][0]
    pre = preprocess_case(np.stack(volumes).astype(np.float32), affine, int(bundle.slice_params["size"]),
                          int(bundle.slice_params["margin"]))
    probs = predict_slices(bundle.model, pre.images, batch_size).float().cpu().numpy()[:, 0]
    mask = (restore_volume(probs, pre.z, pre.geometry) > bundle.threshold).astype(np.uint8)
    out = write_like(Path(out_dir) / f"{case.case_id}_mask.nii.gz", mask, reference)
    spacing = read_meta(reference).spacing
    volume_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
    log.info("%s: tumour %.1f ml -> %s", case.case_id, volume_ml, out)
    return {"case_id": case.case_id, "mask": str(out), "tumour_ml": round(volume_ml, 2), "voxels": int(mask.sum())}


def predict_dirs(case_dirs: list[str | Path], model: str | None = None, out_dir: str | Path = "predictions",
                 device: str = "auto") -> list[dict]:
    """Predict every case found in ``case_dirs`` (each may hold one case or many)."""
    for d in case_dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d} is not a folder; pass folders that hold a case's NIfTI files.")
    bundle = resolve_model(model, device)
    cases = [c for d in case_dirs for c in discover_cases(d)]
    with torch.inference_mode():
        return [predict_case(c, bundle, out_dir) for c in cases]
