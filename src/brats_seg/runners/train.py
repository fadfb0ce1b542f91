"""Stage runners that join the library to MLflow: train, evaluate and register, each one call from its stage."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from brats_seg import tracking
from brats_seg.config import BaseParams
from brats_seg.data.dataset import index_digest, load_split, read_index
from brats_seg.evaluate import evaluate_cases, summarise_cases, write_overlays
from brats_seg.inference import load_model, pick_device, save_model
from brats_seg.io.tables import read_json, write_json
from brats_seg.plots import plot_training_curve
from brats_seg.provenance import dvc_lock_hashes, git_state
from brats_seg.train import TrainParams, fingerprint, train_model

log = logging.getLogger(__name__)


def run_tags(base: BaseParams) -> dict[str, str]:
    """Provenance tags for a run: git commit and dirtiness, dvc.lock hashes of raw data and slices."""
    git = git_state()
    hashes = dvc_lock_hashes({"raw": base.raw_dir, "slices": base.slices_dir})
    return {"git_commit": git["commit"], "git_dirty": git["dirty"],
            **{f"dvc_{name}_md5": value for name, value in hashes.items()}}


def train_stage(params: TrainParams, base: BaseParams) -> dict:
    """Train on the slice stage's train split, track it in MLflow, write the model and reports."""
    index = read_index(base.slices_dir)
    meta = read_json(Path(base.slices_dir) / "meta.json")
    train_set, val_set = load_split(base.slices_dir, "train", index), load_split(base.slices_dir, "val", index)
    key = fingerprint(params, train_set, base.seed)
    checkpoint = Path(base.checkpoint_dir) / f"{key}.pt"
    run_file = checkpoint.with_suffix(".run.json")
    previous = read_json(run_file)["run_id"] if params.resume and run_file.is_file() and checkpoint.is_file() else None
    with tracking.start_run(base.experiment, run_id=previous, run_name=f"train-{key[:8]}") as run:
        write_json(run_file, {"run_id": run.run_id})
        if previous is None:
            run.log_params({"train": dataclasses.asdict(params), "slice": meta["params"], "seed": base.seed})
            run.set_tags({**run_tags(base), "split_digest": meta["split_digest"], "fingerprint": key})
            digest = index_digest(index)
            run.log_dataset(index, "slices", str(Path(base.slices_dir).resolve() / "index.parquet"), digest,
                            context="training")
            run.set_tags({"slice_index_digest": digest})
        result = train_model(params, train_set, val_set, base.seed, checkpoint, train_set.images.shape[1],
                             on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch))
        save_model(base.model, result.model, result.regions, meta["params"],
                   extra={"run_id": run.run_id, "split_digest": meta["split_digest"]})
        curve = pd.DataFrame(result.history)
        Path(base.train_curve).parent.mkdir(parents=True, exist_ok=True)
        curve.to_csv(base.train_curve, index=False)
        png = plot_training_curve(result.history, base.train_curve_png)
        best = next(h for h in result.history if h["epoch"] == result.best_epoch)
        report = {"run_id": run.run_id, "best_epoch": result.best_epoch, "best_val_dice": best["val_dice"],
                  "epochs": len(result.history), "device": result.device, "train_slices": len(train_set),
                  "val_slices": len(val_set), "regions": list(result.regions), "split_digest": meta["split_digest"]}
        write_json(base.train_report, report)
        run.log_metrics({"best_val_dice": best["val_dice"], "best_epoch": result.best_epoch})
        run.log_dict(dataclasses.asdict(result.model.config), "model_config.json")
        run.log_artifact(png)
        run.log_artifact(base.train_curve)
    return report


def evaluate_stage(base: BaseParams, device: str = "auto", split: str = "test") -> dict:
    """Evaluate the trained model per patient; write eval.json, eval_cases.csv, overlays; log to MLflow."""
    bundle = load_model(base.model, pick_device(device))
    frame, slice_level = evaluate_cases(bundle, base.slices_dir, base.raw_dir, split)
    summary = summarise_cases(frame, slice_level)
    write_json(base.eval_report, summary)
    Path(base.eval_cases).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(base.eval_cases, index=False)
    overlays = write_overlays(bundle, frame, base.slices_dir, base.raw_dir, base.overlays_dir)
    run_id = read_json(base.train_report)["run_id"]
    with tracking.start_run(base.experiment, run_id=run_id) as run:
        flat = {f"test_{region}_{k}": v for region, stats in summary.items() if isinstance(stats, dict)
                for k, v in stats.items()}
        run.log_metrics(flat)
        run.log_artifact(base.eval_report)
        run.log_artifact(base.eval_cases)
        for path in overlays:
            run.log_artifact(path, "overlays")
    return summary


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
    test = load_split(base.slices_dir, "test")
    example = test.images[:1].astype(np.float32)
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
