"""Runner of the DVC stage `train`: train on the slice stage's train split, tracked in one MLflow run."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd

from brats_seg import tracking
from brats_seg.config import BaseParams
from brats_seg.data.dataset import index_digest, load_split, read_index
from brats_seg.inference import pick_device, save_model
from brats_seg.io.tables import read_json, write_json
from brats_seg.plots import plot_training_curve
from brats_seg.provenance import code_digest, code_manifest, dvc_lock_hashes, git_state
from brats_seg.train import TrainParams, fingerprint, train_model

log = logging.getLogger(__name__)


def run_tags(base: BaseParams) -> dict[str, str]:
    """Provenance tags for a run: git commit and dirtiness, dvc.lock hashes of raw data and slices, and the
    digest of every project file the stages from download to train run (``code_files``: file -> sha256)."""
    git = git_state()
    hashes = dvc_lock_hashes({"raw": base.raw_dir, "slices": base.slices_dir})
    code = code_manifest()
    return {"git_commit": git["commit"], "git_dirty": git["dirty"], "code_digest": code_digest(code),
            "code_files": json.dumps(code, sort_keys=True, separators=(",", ":")),
            **{f"dvc_{name}_md5": value for name, value in hashes.items()}}


def model_params(params: TrainParams, slice_params: dict, seed: int) -> dict:
    """The parameters that made a model, as logged to its run (and compared by `brats-seg lineage --verify`)."""
    return {"train": dataclasses.asdict(params), "slice": slice_params, "seed": seed}


def split_table(slices_dir: str | Path) -> pd.DataFrame:
    """Who is in which split: one row per sliced case (case_id, patient_id, split), from cases.parquet."""
    return pd.read_parquet(Path(slices_dir) / "cases.parquet", columns=["case_id", "patient_id", "split"])


def train_stage(params: TrainParams, base: BaseParams) -> dict:
    """Train on the slice stage's train split, track it in MLflow, write the model and reports.

    An interrupted run (same fingerprint: settings, data, code) resumes from its checkpoint in its own MLflow
    run; anything else starts fresh. The checkpoint is removed once the model and reports are written.
    """
    index = read_index(base.slices_dir)
    meta = read_json(Path(base.slices_dir) / "meta.json")
    train_set, val_set = load_split(base.slices_dir, "train", index), load_split(base.slices_dir, "val", index)
    device = pick_device(params.device)
    key = fingerprint(params, train_set, val_set, base.seed, device.type)
    checkpoint = Path(base.checkpoint_dir) / f"{key}.pt"
    run_file = checkpoint.with_suffix(".run.json")
    previous = read_json(run_file)["run_id"] if params.resume and run_file.is_file() and checkpoint.is_file() else None
    with tracking.start_run(base.experiment, run_id=previous, run_name=f"train-{key[:8]}") as run:
        write_json(run_file, {"run_id": run.run_id})
        if previous is None:
            run.log_params(model_params(params, meta["params"], base.seed))
            run.set_tags({**run_tags(base), "split_digest": meta["split_digest"], "fingerprint": key})
            digest = index_digest(index)
            run.log_dataset(index, "slices", str(Path(base.slices_dir).resolve() / "index.parquet"), digest,
                            context="training")
            run.set_tags({"slice_index_digest": digest})
            run.log_split_tables(split_table(base.slices_dir))
        result = train_model(params, train_set, val_set, base.seed, checkpoint, train_set.images.shape[1],
                             on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch), key=key)
        save_model(base.model, result.model, result.regions, meta["params"],
                   extra={"split_digest": meta["split_digest"], "fingerprint": key})
        curve = pd.DataFrame(result.history)
        Path(base.train_curve).parent.mkdir(parents=True, exist_ok=True)
        curve.to_csv(base.train_curve, index=False)
        png = plot_training_curve(result.history, base.train_curve_png)
        best = next(h for h in result.history if h["epoch"] == result.best_epoch)
        report = {"run_id": run.run_id, "best_epoch": result.best_epoch, "best_val_dice": best["val_dice"],
                  "epochs": len(result.history), "device": result.device, "train_slices": len(train_set),
                  "val_slices": len(val_set), "regions": list(result.regions), "split_digest": meta["split_digest"],
                  "fingerprint": key}
        write_json(base.train_report, report)
        run.log_metrics({"best_val_dice": best["val_dice"], "best_epoch": result.best_epoch})
        run.log_dict(dataclasses.asdict(result.model.config), "model_config.json")
        run.log_artifact(png)
        run.log_artifact(base.train_curve)
    checkpoint.unlink(missing_ok=True)  # done: the model file is the result; a rerun is a new run
    run_file.unlink(missing_ok=True)
    return report
