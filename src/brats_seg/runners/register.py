"""Runner of the DVC stage `register`: log the trained model to MLflow and register a new version."""

from __future__ import annotations

import dataclasses
import logging

from brats_seg import tracking
from brats_seg.config import BaseParams
from brats_seg.inference import load_model
from brats_seg.io.tables import read_json, write_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RegisterParams:
    """params.yaml ``register`` section."""

    model_name: str = "brats-unet"
    alias: str = "challenger"


def register_stage(params: RegisterParams, base: BaseParams) -> dict:
    """Log the trained model with mlflow.pytorch and register it as a new version with alias ``challenger``."""
    import numpy as np
    import torch

    bundle = load_model(base.model)
    train = read_json(base.train_report)
    evaluation = read_json(base.eval_report)
    run = tracking.get_run(train["run_id"])
    # a synthetic input example (z-scored noise of the model's input shape): no patient data in the registry
    channels, size = len(bundle.slice_params["modalities"]), int(bundle.slice_params["size"])
    example = np.random.default_rng(0).standard_normal((1, channels, size, size)).astype(np.float32)
    with torch.no_grad():
        output = torch.sigmoid(bundle.model(torch.from_numpy(example))).numpy()
    tags = {key: run["tags"][key] for key in ("git_commit", "git_dirty", "dvc_raw_md5", "dvc_slices_md5",
                                              "split_digest", "slice_index_digest") if key in run["tags"]}
    for region, stats in evaluation.items():
        if isinstance(stats, dict):
            tags[f"test_{region}_dice_mean"] = f"{stats['dice_mean']:.6f}"
            tags[f"test_{region}_hd95_median"] = f"{stats['hd95_median']}"
    tags["run_id"] = train["run_id"]
    metadata = {"regions": list(bundle.regions), "slice": bundle.slice_params, "threshold": bundle.threshold}
    record = tracking.register_model(train["run_id"], bundle.model, params.model_name, example, output, metadata,
                                     tags, params.alias)
    record["test_wt_dice_mean"] = evaluation.get("wt", {}).get("dice_mean")
    write_json(base.registered_report, record)
    log.info("registered %s version %s as @%s", record["name"], record["version"], params.alias)
    return record
