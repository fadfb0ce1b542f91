"""Segment new cases: label maps (a model of regions) or binary whole-tumour masks on each input's own grid.

Cases may use any naming the download stage recognises. Preprocessing is the slice stage's own
(:func:`brats_seg.data.preprocess.preprocess`) with the parameters stored with the model, then the one
predict step that evaluation uses too (:mod:`brats_seg.inference.segment`: post-processing included). Inputs are
checked before anything is written: each modality decodes, is 3D and lies on the case's one grid.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from brats_seg import __version__
from brats_seg.data.labels import from_canonical, regions_to_labels
from brats_seg.data.layouts import MODALITIES, CaseSource, discover_cases
from brats_seg.data.preprocess import preprocess
from brats_seg.errors import DataError, UserError
from brats_seg.inference.bundle import ModelBundle, cohort_summary, cohort_warning
from brats_seg.inference.segment import segment_case
from brats_seg.io.nifti import Meta, read_header, read_volume, write_like
from brats_seg.io.tables import write_json
from brats_seg.registry.resolve import resolve_model

log = logging.getLogger(__name__)

def check_case(case: CaseSource, modalities: tuple[str, ...]) -> Meta:
    """Check a case from the file headers alone before any prediction: every modality the model needs is
    there, decodes as NIfTI, is one 3D volume (a channel of a 4D Decathlon image) and lies on one grid.
    Returns the grid (the first modality's header). Raises DataError with one sentence otherwise."""
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise DataError(f"case {case.case_id} has no {', '.join(missing)} image; the model needs "
                        f"{', '.join(modalities)} (found {', '.join(sorted(case.images)) or 'none'}).")
    metas = {}
    for m in modalities:
        path, channel = case.images[m]
        metas[m] = read_header(path, ndim=3 if channel is None else 4)
        if channel is not None and metas[m].shape[3] != len(MODALITIES):
            raise DataError(f"{path} has {metas[m].shape[3]} volumes but a Decathlon image holds {len(MODALITIES)} "
                            f"(FLAIR, T1w, T1gd, T2w, in that order); pass the Decathlon's 4D image, or one file "
                            f"per modality.")
    grid = metas[modalities[0]]
    for m, meta in metas.items():
        if not grid.same_grid(meta):
            raise DataError(f"case {case.case_id}: {case.images[m][0]} is not on the grid of "
                            f"{case.images[modalities[0]][0]} (shape {'x'.join(map(str, meta.shape[:3]))} vs "
                            f"{'x'.join(map(str, grid.shape[:3]))}, or different affines); resample the "
                            f"modalities to one grid first.")
    return grid


def predict_case(case: CaseSource, bundle: ModelBundle, out_dir: str | Path, batch_size: int | None = None,
                 labels: str | None = None, wt_mask: bool = False) -> dict:
    """Segment one case on the grid of its first modality. A model of several regions writes the label map
    ``<case_id>.nii.gz`` (uint8; WT -> oedema, then TC -> necrotic core, then ET -> enhancing, in the convention
    ``labels``, default the one its training data came in: the file name the BraTS evaluators match); a WT-only
    model, or ``wt_mask``, writes the binary whole-tumour mask ``<case_id>_mask.nii.gz`` (uint8, 0/1). Beside the
    first output, a JSON sidecar says what made it. Returns the case's volumes (ml) per region and the paths."""
    spec = bundle.spec
    grid = check_case(case, spec.modalities)
    volumes = [read_modality(case, m) for m in spec.modalities]
    reference = case.images[spec.modalities[0]][0]
    pre = preprocess(spec, np.stack(volumes).astype(np.float32), grid.affine)
    masks = segment_case(bundle, pre.images, pre.z, pre.geometry, grid.spacing[:3], batch_size).masks
    ml = float(np.prod(grid.spacing)) / 1000.0
    result = {"case_id": case.case_id, "volumes_ml": {r: round(float(m.sum()) * ml, 2) for r, m in masks.items()},
              "voxels": int(masks["wt"].sum())}
    result["tumour_ml"] = result["volumes_ml"]["wt"]
    description = f"brats-seg {__version__} {bundle.origin}"
    outputs = []
    if len(bundle.regions) > 1:
        convention = labels or bundle.cohort.get("label_convention", "brats2020")
        label_map = from_canonical(regions_to_labels(masks), convention)
        outputs.append(write_like(Path(out_dir) / f"{case.case_id}.nii.gz", label_map, reference, description))
        result.update(label_map=str(outputs[-1]), labels=convention)
    if len(bundle.regions) == 1 or wt_mask:
        outputs.append(write_like(Path(out_dir) / f"{case.case_id}_mask.nii.gz", masks["wt"].astype(np.uint8),
                                  reference, description))
        result["mask"] = str(outputs[-1])
    log.debug("%s: %s -> %s", case.case_id, result["volumes_ml"], outputs)
    write_json(outputs[0].with_name(outputs[0].name.replace(".nii.gz", ".json")), {**result, **provenance(bundle)})
    return result


def describe_case(result: dict) -> str:
    """``CASE: tumour 40.1 ml -> FILE`` (with TC and ET volumes for a model of several regions)."""
    volumes = result["volumes_ml"]
    more = "".join(f", {r.upper()} {v:.1f} ml" for r, v in volumes.items() if r != "wt")
    files = " and ".join(result[k] for k in ("label_map", "mask") if k in result)
    return f"{result['case_id']}: tumour {volumes['wt']:.1f} ml (WT){more} -> {files}" if more else \
        f"{result['case_id']}: tumour {volumes['wt']:.1f} ml -> {files}"


def provenance(bundle: ModelBundle) -> dict:
    """What made a mask, for its JSON sidecar: the model, its fingerprint (training settings, data and code), what
    it learnt from, the threshold, the date and brats-seg's version."""
    return {"model": bundle.origin, "fingerprint": bundle.fingerprint, "cohort": bundle.cohort,
            "threshold": bundle.threshold, "postprocess": bundle.postprocess.to_dict(), "tta": bundle.tta,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "brats_seg_version": __version__, "warning": cohort_warning(bundle)}


def read_modality(case: CaseSource, modality: str) -> np.ndarray:
    """One modality ``(X, Y, Z)`` of a case, refused with one sentence when it holds NaN or infinite voxels or
    only zeros (a wrong or empty file: the model never saw such an input, validation quarantines it)."""
    path, channel = case.images[modality]
    data, _ = read_volume(path, ndim=3 if channel is None else 4)
    volume = data[..., channel] if channel is not None else data
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise DataError(f"case {case.case_id}: the {modality} image {path} holds {int((~np.isfinite(volume)).sum())} "
                        f"NaN or infinite voxels; fix or replace the image.")
    if not volume.any():
        raise DataError(f"case {case.case_id}: the {modality} image {path} holds only zeros; replace it with the "
                        f"case's real {modality} image.")
    return volume


def predict_dirs(case_dirs: list[str | Path], model: str | None = None, out_dir: str | Path = "predictions",
                 device: str = "auto", labels: str | None = None, wt_mask: bool = False,
                 tta: bool | None = None) -> list[dict]:
    """Predict every case found in ``case_dirs`` (each may hold one case or many), with the model's test-time
    mirroring unless ``tta`` overrides it (written in each mask's sidecar either way).

    Every case is checked (:func:`check_case`) before the first mask is written.
    """
    for d in case_dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d} is not a folder; pass folders that hold a case's NIfTI files.")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir} is a file; pass a folder for the masks.")
    cases = [c for d in case_dirs for c in discover_cases(d)]  # before the model: a wrong folder fails fast
    bundle = resolve_model(model, device)
    if tta is not None:
        bundle = dataclasses.replace(bundle, tta=tta)
    for case in cases:
        check_case(case, bundle.spec.modalities)
    with torch.inference_mode():
        results = [predict_case(c, bundle, out_dir, labels=labels, wt_mask=wt_mask) for c in cases]
    # said once the masks exist (a bad case stays one sentence): what made them, and how far to trust them
    log.info("model %s, %s", bundle.origin, cohort_summary(bundle))
    warning = cohort_warning(bundle)
    if warning:
        log.warning("%s", warning)
    return results
