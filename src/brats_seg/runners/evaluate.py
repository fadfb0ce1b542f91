"""Runner of the DVC stage `evaluate`: per-patient test metrics, logged to the training run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from brats_seg import tracking
from brats_seg.config import BaseParams, runtime_field
from brats_seg.evaluate import evaluate_cases, summarise_cases, write_overlays
from brats_seg.inference import load_model, pick_device
from brats_seg.io.tables import read_json, write_json
from brats_seg.provenance import eval_code_digest


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """params.yaml ``evaluate`` section."""

    device: Literal["auto", "cpu", "cuda"] = runtime_field("auto")  # where it runs


def evaluate_stage(params: EvaluateParams, base: BaseParams, split: str = "test") -> dict:
    """Evaluate the trained model per patient; write eval.json, eval_cases.csv, overlays; log to MLflow."""
    bundle = load_model(base.model, pick_device(params.device))
    frame, slice_level = evaluate_cases(bundle, base.slices_dir, base.raw_dir, split)
    summary = summarise_cases(frame, slice_level)
    write_json(base.eval_report, summary)
    Path(base.eval_cases).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(base.eval_cases, index=False)
    overlays = write_overlays(bundle, frame, base.slices_dir, base.overlays_dir)
    run_id = read_json(base.train_run)["run_id"]
    content = read_json(Path(base.slices_dir) / "meta.json").get("content_digests", {}).get(split, "unknown")
    with tracking.start_run(base.experiment, run_id=run_id) as run:
        # what makes two recorded scores comparable: the same cases, images, labels and scoring code
        run.set_tags({"test_content_digest": content, "eval_code_digest": eval_code_digest()})
        flat = {f"test_{region}_{k}": v for region, stats in summary.items() if isinstance(stats, dict)
                for k, v in stats.items()}
        run.log_metrics(flat)
        run.log_artifact(base.eval_report)
        run.log_artifact(base.eval_cases)
        for path in overlays:
            run.log_artifact(path, "overlays")
    return summary
