"""Runner of the DVC stage `train`: train on the slice stage's train split, tracked in one MLflow run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import sys
from pathlib import Path

import pandas as pd

from brats_seg.base_params import BaseParams
from brats_seg.data.dataset import ShardedSplit, SliceSet, index_digest, open_split, read_index
from brats_seg.data.spec import SliceSpec
from brats_seg.evaluation.choose_postprocess import DEFAULT_THRESHOLD, THRESHOLDS
from brats_seg.evaluation.evaluate import choose_postprocessing
from brats_seg.evaluation.params import EvaluateParams
from brats_seg.inference.bundle import ModelBundle, save_model
from brats_seg.inference.postprocess import NONE
from brats_seg.io.checkpoint import prune_checkpoints
from brats_seg.io.tables import read_json, write_json
from brats_seg.orchestration.provenance import code_digest, code_manifest, dvc_lock_hashes, git_state
from brats_seg.registry import tracking
from brats_seg.reporting.plots import plot_training_curve
from brats_seg.training.distributed import Ranks, process_group
from brats_seg.training.ensemble import member_checkpoints, train_members
from brats_seg.training.loop import TrainResult, computation, fingerprint, validate
from brats_seg.training.params import TrainParams, model_params
from brats_seg.training.selection import METRIC, LesionSelection, selection_for

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


def log_inputs_as_written(run: tracking.Run) -> None:
    """Keep what the model was trained under, whatever the state of git: params.yaml and dvc.lock as they are
    now (artifacts ``inputs/``), and the DVC experiment running it (tags ``dvc_exp_name``, ``dvc_exp_baseline``)."""
    logged = [name for name in ("params.yaml", "dvc.lock") if Path(name).is_file()]
    for name in logged:
        run.log_artifact(name, "inputs")
    tags = {"inputs_logged": ",".join(f"inputs/{name}" for name in logged), "dvc_exp_name": os.environ.get(
        "DVC_EXP_NAME"), "dvc_exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV")}
    run.set_tags({k: v for k, v in tags.items() if v})


def training_cohort(meta: dict) -> dict:
    """What a model learnt from, for whoever uses its masks: the source kind and the train and validation cases
    and patients (from the slice stage's meta.json)."""
    return {"source": meta.get("source", "unknown"), "label_convention": meta.get("label_convention", "brats2020"),
            **{f"{split}_{what}": int(meta.get(what, {}).get(split, 0)) for split in ("train", "val")
               for what in ("cases", "patients")}}


def split_table(slices_dir: str | Path) -> pd.DataFrame:
    """Who is in which split: one row per sliced case (case_id, patient_id, split, image_sha256), from
    cases.parquet."""
    return pd.read_parquet(Path(slices_dir) / "cases.parquet",
                           columns=["case_id", "patient_id", "split", tracking.IMAGE_COLUMN])


def memory_budget(params: TrainParams, ranks: Ranks) -> float:
    """Bytes of training data this process may hold in memory: ``train.memory_gb``, or with ``auto`` half of
    the host memory available now, shared among the training processes on this host."""
    if params.memory_gb != "auto":
        return params.memory_gb * 1e9
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world))
    return 0.5 * available_memory() / local


def available_memory() -> int:
    """Host memory available to new allocations (MemAvailable on Linux; physical memory elsewhere)."""
    return _proc_bytes("/proc/meminfo", "MemAvailable") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes: VmHWM on Linux (getrusage's maxrss there also
    counts the memory of the process this one was forked from, e.g. dvc's), maxrss elsewhere."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes; None where there is no such file or line."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def open_splits(slices_dir: str | Path, index: pd.DataFrame, budget: float) -> tuple[SliceSet | ShardedSplit, ...]:
    """The train and validation splits: each loaded into memory while the budget lasts (train first), else
    left in its shards to be read batch by batch; same rows, same order, same training result."""
    splits = []
    for name in ("train", "val"):
        split = open_split(slices_dir, name, index)
        if split.nbytes <= budget:
            budget -= split.nbytes
            splits.append(split.load())
        else:
            log.info("the %s split (%s) exceeds the memory budget (%s left of train.memory_gb): its slices are "
                     "read from the shards as they are needed", name, _size(split.nbytes), _size(max(budget, 0)))
            splits.append(split)
    return tuple(splits)


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def postprocessing(params: TrainParams, base: BaseParams, evaluate: EvaluateParams, bundle: ModelBundle,
                   run: tracking.Run) -> tuple[dict, float]:
    """The post-processing of a trained model, chosen on its validation patients (``train.postprocess``), and its
    probability threshold (``train.threshold``: a number, or ``auto``: chosen there too), logged to its run; the
    model file's ``postprocess`` field (none when ``train.postprocess`` is false) and ``threshold``."""
    auto = params.threshold == "auto"
    threshold = DEFAULT_THRESHOLD if auto else float(params.threshold)
    if not params.postprocess and not auto:
        return NONE.to_dict(), threshold
    choice = choose_postprocessing(dataclasses.replace(bundle, threshold=threshold), base.slices_dir, base.raw_dir,
                                   evaluate.lesionwise, main_tumour=params.main_tumour,
                                   postprocess=params.postprocess, thresholds=THRESHOLDS if auto else ())
    run.log_dict(choice.to_dict(), "postprocess.json")
    run.log_metrics({f"val_{r}_lesion_dice_{when}": value for when, scores in (("raw", choice.before),
                     ("postprocessed", choice.after)) for r, value in scores.items()})
    pp = choice.postprocess if params.postprocess else NONE
    run.set_tags({"postprocess": pp.describe(), "threshold": f"{choice.threshold:g}"})
    return pp.to_dict(), choice.threshold


def _best_val_dice(params: TrainParams, result: TrainResult, val_set: SliceSet | ShardedSplit) -> float:
    """The validation split's Dice of the model kept: its best epoch's, or the ensemble's own."""
    if params.folds == 0:
        return next(h for h in result.history if h["epoch"] == result.best_epoch)["val_dice"]
    return validate(result.model, val_set, result.regions, params.bce_weight, params.amp)["val_dice"]


def _member_report(params: TrainParams, result: TrainResult) -> dict:
    """Per ensemble member: its best epoch (by ``train.select``) and the Dice there on its own fold (none for one
    network)."""
    report = {}
    for fold in range(params.folds):
        rows = [h for h in result.history if h["fold"] == fold]
        top = max(rows, key=lambda h: h[METRIC[params.select]])  # the first of equals, as training keeps it
        report.update({f"fold{fold}_best_epoch": top["epoch"], f"fold{fold}_val_dice": top["val_dice"]})
    return report


def _lesion_report(params: TrainParams, result: TrainResult) -> dict:
    """With ``train.select: lesion_dice``, the validation patients' lesion-wise Dice at the epoch kept (one
    network; an ensemble's members report theirs in the curve)."""
    if params.select != "lesion_dice" or params.folds:
        return {}
    return {"best_val_lesion_dice": next(h for h in result.history if h["epoch"] == result.best_epoch)[
        "val_lesion_dice"]}


def _lesion_selection(params: TrainParams, base: BaseParams, evaluate: EvaluateParams) -> LesionSelection | None:
    """With ``train.select: lesion_dice``, what scoring the validation patients lesion-wise needs: the official
    configuration and each case's slice pixel in voxels (its crop side / slice size, cases.parquet)."""
    if params.select != "lesion_dice":
        return None
    cases = pd.read_parquet(Path(base.slices_dir) / "cases.parquet", columns=["case_id", "side", "size"])
    return selection_for({row.case_id: (row.side, row.size) for row in cases.itertuples()}, evaluate.lesionwise)


def _channel_group(base: BaseParams) -> int:
    """Input channels per modality in the slice stage's shards: 2 * slice.context + 1."""
    return SliceSpec.from_record(read_json(Path(base.slices_dir) / "meta.json")["params"]).context * 2 + 1


def train_stage(params: TrainParams, base: BaseParams, evaluate: EvaluateParams | None = None) -> dict:
    """Train on the slice stage's train split, track it in MLflow, write the model and reports.

    An interrupted run (same fingerprint: settings, data, code) resumes from its checkpoint in its own MLflow
    run; anything else starts fresh. The checkpoint is removed once the model and reports are written. In a
    distributed run every process calls this; rank 0 alone tracks and writes, and returns the report (the
    others return an empty dict).
    """
    with process_group(params.nproc, params.device) as ranks:
        index = read_index(base.slices_dir)
        train_set, val_set = open_splits(base.slices_dir, index, memory_budget(params, ranks))
        key = fingerprint(params, train_set, val_set, base.seed, ranks.device.type)
        if not ranks.main:
            train_members(params, train_set, val_set, base.seed, Path(base.checkpoint_dir), key, train_set.shape[1],
                          ranks=ranks, channel_group=_channel_group(base))
            ranks.max(peak_rss())
            return {}
        return _track_and_train(params, base, evaluate or EvaluateParams(), index, train_set, val_set, key, ranks)


def _track_and_train(params: TrainParams, base: BaseParams, evaluate: EvaluateParams, index: pd.DataFrame,
                     train_set: SliceSet | ShardedSplit, val_set: SliceSet | ShardedSplit, key: str,
                     ranks: Ranks) -> dict:
    meta = read_json(Path(base.slices_dir) / "meta.json")
    checkpoints = member_checkpoints(Path(base.checkpoint_dir), key, params.folds)
    run_file = Path(base.checkpoint_dir) / f"{key}.run.json"
    started = any(c.is_file() for c in checkpoints)
    previous = read_json(run_file)["run_id"] if params.resume and run_file.is_file() and started else None
    with tracking.start_run(base.experiment, run_id=previous, run_name=f"train-{key[:8]}") as run:
        write_json(run_file, {"run_id": run.run_id})
        if previous is None:
            run.log_params(model_params(params, meta["params"], base.seed))
            resolved = computation(params, ranks.device.type)  # what the fingerprint keys: device, threads, versions
            run.set_tags({**run_tags(base), "split_digest": meta["split_digest"], "fingerprint": key,
                          "computation": json.dumps(resolved, sort_keys=True), "torch_version": resolved["torch"],
                          "numpy_version": resolved["numpy"]})
            digest = index_digest(index)
            run.log_dataset(index, "slices", str(Path(base.slices_dir).resolve() / "index.parquet"), digest,
                            context="training")
            run.set_tags({"slice_index_digest": digest})
            run.log_split_tables(split_table(base.slices_dir))
            log_inputs_as_written(run)
        result = train_members(params, train_set, val_set, base.seed, Path(base.checkpoint_dir), key,
                               train_set.shape[1], on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
                               ranks=ranks, channel_group=_channel_group(base),
                               lesions=_lesion_selection(params, base, evaluate))
        peak = ranks.max(peak_rss())
        cohort = training_cohort(meta)
        chosen, threshold = postprocessing(params, base, evaluate, ModelBundle(
            result.model, result.regions, meta["params"], cohort=cohort, tta=evaluate.tta), run)
        save_model(base.model, result.model, result.regions, meta["params"],
                   extra={"split_digest": meta["split_digest"], "fingerprint": key, "cohort": cohort,
                          "postprocess": chosen, "threshold": threshold, "tta": evaluate.tta})
        curve = pd.DataFrame(result.history)
        Path(base.train_curve).parent.mkdir(parents=True, exist_ok=True)
        curve.to_csv(base.train_curve, index=False)
        png = plot_training_curve(result.history, base.train_curve_png)
        # numbers only in the DVC metric (dvc exp show, dvc metrics diff); the run's identifiers beside it
        report = {"best_epoch": result.best_epoch, "best_val_dice": _best_val_dice(params, result, val_set),
                  "epochs": len(result.history) // max(params.folds, 1), "train_slices": len(train_set),
                  "val_slices": len(val_set), "processes": ranks.world, "threshold": threshold,
                  **_member_report(params, result), **_lesion_report(params, result)}
        # and facts of this machine, which differ from run to run (not a result to compare)
        identity = {"run_id": run.run_id, "device": result.device, "peak_rss_mb": round(peak / 2**20),
                    "regions": list(result.regions),
                    "split_digest": meta["split_digest"], "fingerprint": key,
                    "streamed": [name for name, split in (("train", train_set), ("val", val_set))
                                 if isinstance(split, ShardedSplit)]}
        write_json(base.train_report, report)
        write_json(base.train_run, identity)
        run.log_metrics({"best_val_dice": report["best_val_dice"], "best_epoch": result.best_epoch,
                         "peak_rss_mb": identity["peak_rss_mb"]})
        run.log_dict(dataclasses.asdict(result.model.config), "model_config.json")
        run.log_artifact(png)
        run.log_artifact(base.train_curve)
    for checkpoint in checkpoints:  # done: the model file is the result; a rerun is a new run
        checkpoint.unlink(missing_ok=True)
    run_file.unlink(missing_ok=True)
    prune_checkpoints(Path(base.checkpoint_dir))  # other fingerprints' checkpoints: the most recent few stay
    return {**report, **identity}
