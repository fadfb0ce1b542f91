"""Score one prediction against one reference, per region, with docs/design.md's definitions.

Both files are checked first: readable NIfTI, 3D, on one grid, and holding only labels of the named scheme.
The scheme is an explicit choice: a label map in ``brats2020``, ``brats2023`` or ``msd`` labels is scored
for WT, TC and ET; ``binary`` scores a 0/1 whole-tumour mask for WT only (the reference may then be a 0/1
mask or a label map in any scheme: WT is its non-zero voxels). The result names the scheme used.
``lesionwise`` names an official BraTS lesion-wise config
(:mod:`brats_seg.evaluation.lesionwise`): each scored region then
also holds a ``"lesionwise"`` dict of that package's metrics and the project's ``lesion_dice``, ``lesion_hd95`` and
``lesion_pq`` (every lesion counted, as the evaluate stage and the promotion gate count them), and the result names
the config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brats_seg.data.labels import (
    ANY_SOURCE_LABELS,
    MASK_LABELS,
    REGIONS,
    SOURCE_LABELS,
    label_ids,
    region_mask,
    to_canonical,
    unexpected_labels,
)
from brats_seg.errors import DataError, UserError
from brats_seg.evaluation.lesion_configs import LesionConfig, get_config
from brats_seg.evaluation.lesionwise import lesion_columns, region_metrics, score_canonical
from brats_seg.evaluation.metrics import case_metrics
from brats_seg.io.nifti import Meta, read_volume

BINARY = "binary"
SCHEMES: tuple[str, ...] = (*SOURCE_LABELS, BINARY)
_SHOWN_VALUES = 8


def score_files(ref: str | Path, pred: str | Path, labels: str = "brats2020", lesionwise: str | None = None) -> dict:
    """``{"labels": scheme, region: metrics, ...}``: WT, TC and ET for a label scheme, WT only for ``binary``.
    With ``lesionwise`` (a config name such as ``gli``) each region also holds ``"lesionwise"``: the official
    lesion-wise metrics, and the result ``"lesionwise_config"`` (and ``"lesionwise_regions"``: project region ->
    the config's region name)."""
    if labels not in SCHEMES:
        raise UserError(f"--labels {labels} is not a label scheme; use one of {', '.join(SCHEMES)}.")
    config = get_config(lesionwise) if lesionwise is not None else None
    ref_data, ref_meta = read_volume(ref)
    pred_data, pred_meta = read_volume(pred)
    _check_grid(ref, ref_meta, pred, pred_meta)
    if labels == BINARY:
        _check_values(ref, ref_data, ANY_SOURCE_LABELS, "the labels of every scheme",
                      "pass a label map or a 0/1 mask as the reference")
        _check_values(pred, pred_data, MASK_LABELS, "a 0/1 mask", "--labels binary needs a whole-tumour mask, "
                      f"so name the label scheme of a label map instead ({', '.join(SOURCE_LABELS)})")
        pred_wt, ref_wt = label_ids(pred_data) == 1, label_ids(ref_data) != 0
        wt = case_metrics(pred_wt, ref_wt, ref_meta.spacing)
        if config is not None:
            wt["lesionwise"] = region_metrics(pred_wt, ref_wt, ref_meta.spacing, config)
            wt.update(lesion_columns(wt["lesionwise"], config.name))
        return {"labels": BINARY, "wt": wt, **_lesionwise_keys(config)}
    fix = (f"name the files' scheme with --labels ({', '.join(SCHEMES)}), and pass label maps, not probabilities "
           f"or images")
    _check_values(ref, ref_data, SOURCE_LABELS[labels], f"the {labels} labels", fix)
    _check_values(pred, pred_data, SOURCE_LABELS[labels], f"the {labels} labels", fix)
    _refuse_mask_as_label_map(pred, pred_data, ref, ref_data)
    ref_labels, pred_labels = to_canonical(ref_data, labels), to_canonical(pred_data, labels)
    scores = {r: case_metrics(region_mask(pred_labels, r), region_mask(ref_labels, r), ref_meta.spacing)
              for r in REGIONS}
    if config is not None:
        for region, metrics in score_canonical(pred_labels, ref_labels, ref_meta.spacing, config.name).items():
            scores[region]["lesionwise"] = metrics
            scores[region].update(lesion_columns(metrics, config.name))  # the project's: every lesion counted
    return {"labels": labels, **scores, **_lesionwise_keys(config)}


def _lesionwise_keys(config: LesionConfig | None) -> dict:
    if config is None:
        return {}
    return {"lesionwise_config": config.name, "lesionwise_regions": dict(config.project_regions)}


def _check_grid(ref: str | Path, ref_meta: Meta, pred: str | Path, pred_meta: Meta) -> None:
    if not ref_meta.same_grid(pred_meta):
        raise DataError(f"{pred} is not on the grid of {ref} (shape {pred_meta.shape} vs {ref_meta.shape}, or "
                        f"different affines); resample the prediction to the reference grid first.")


def _check_values(path: str | Path, data: np.ndarray, allowed: frozenset[int], what: str, fix: str) -> None:
    """Refuse a volume holding anything but ids in ``allowed`` (NaN, -1, 0.5, 7, raw intensities)."""
    bad = unexpected_labels(data, allowed)
    if bad:
        more = len(bad) - _SHOWN_VALUES
        shown = ", ".join(bad[:_SHOWN_VALUES]) + (f" and {more} more" if more > 0 else "")
        ids = ", ".join(map(str, sorted(allowed)))
        raise DataError(f"{path} holds values outside {what} {{{ids}}}: {shown}; {fix}.")


def _refuse_mask_as_label_map(pred: str | Path, pred_data: np.ndarray, ref: str | Path, ref_data: np.ndarray) -> None:
    """A prediction holding exactly 0 and 1 against a reference with other labels is most likely a binary
    mask, which scored as a label map would be all label 1. The user says which it is."""
    pred_values = set(label_ids(np.unique(pred_data)).tolist())
    ref_values = set(label_ids(np.unique(ref_data)).tolist())
    if pred_values == set(MASK_LABELS) and not ref_values <= set(MASK_LABELS):
        raise DataError(f"{pred} holds only 0 and 1 but {ref} is a multi-label map; pass --labels binary to "
                        f"score the prediction as a whole-tumour mask (WT only).")
