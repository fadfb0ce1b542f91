"""Score one prediction against one reference, per region, with DESIGN.md's definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brats_seg.data.labels import REGIONS, region_mask, to_canonical
from brats_seg.errors import UserError
from brats_seg.io.nifti import read_nifti
from brats_seg.metrics import case_metrics


def score_files(ref: str | Path, pred: str | Path, labels: str = "brats2020") -> dict[str, dict[str, float]]:
    """``{region: metrics}`` for WT, TC and ET. Both files use the label convention ``labels``.

    A binary prediction (only 0 and 1) is scored as whole tumour only.
    """
    for path in (ref, pred):
        if not Path(path).is_file():
            raise UserError(f"{path} does not exist; pass existing NIfTI files to --ref and --pred.")
    ref_data, ref_meta = read_nifti(ref)
    pred_data, pred_meta = read_nifti(pred)
    if not ref_meta.same_grid(pred_meta):
        raise UserError(f"{pred} is not on the grid of {ref} (shape {pred_meta.shape} vs {ref_meta.shape}, or "
                        f"different affines); resample the prediction to the reference grid first.")
    ref_labels = to_canonical(ref_data, labels)
    values = set(np.unique(pred_data).tolist())
    if values <= {0, 1}:
        return {"wt": case_metrics(pred_data > 0, region_mask(ref_labels, "wt"), ref_meta.spacing)}
    pred_labels = to_canonical(pred_data, labels)
    return {r: case_metrics(region_mask(pred_labels, r), region_mask(ref_labels, r), ref_meta.spacing)
            for r in REGIONS}
