"""Runner of the DVC stage `evaluate`: per-patient test metrics (legacy and lesion-wise), logged to the training
run."""

from __future__ import annotations

from pathlib import Path

from brats_seg.base_params import BaseParams
from brats_seg.evaluation.evaluate import evaluate_cases, lesion_table, summarise_cases
from brats_seg.evaluation.params import EvaluateParams
from brats_seg.inference.bundle import load_model, pick_device
from brats_seg.io.tables import read_json, write_json
from brats_seg.orchestration.provenance import eval_code_digest
from brats_seg.registry import tracking
from brats_seg.reporting.overlays import write_overlays


def headline(summary: dict) -> dict:
    """The DVC metric of the stage: per region the per-patient mean Dice and lesion-wise Dice (what the gate
    compares), a few columns in `dvc exp show`; eval.json keeps every statistic."""
    return {region: {k: stats[f"{k}_mean"] for k in ("dice", "lesion_dice") if f"{k}_mean" in stats}
            for region, stats in summary.items() if isinstance(stats, dict)}


def evaluate_stage(params: EvaluateParams, base: BaseParams, split: str = "test") -> dict:
    """Evaluate the trained model per patient; write eval.json, eval_metrics.json, eval_cases.csv, eval_lesions.csv
    and the overlays; log them to the model's MLflow run."""
    bundle = load_model(base.model, pick_device(params.device))
    frame, slice_level = evaluate_cases(bundle, base.slices_dir, base.raw_dir, split, lesion_config=params.lesionwise)
    summary = summarise_cases(frame, slice_level)
    write_json(base.eval_report, summary)
    write_json(base.eval_metrics, headline(summary))
    # case_region labels one bar of `dvc plots` per case and region (a bar per case would stack the regions' Dice)
    cases = frame.drop(columns="official", errors="ignore").assign(
        case_region=frame["case_id"] + " " + frame["region"].str.upper())
    for path, table in ((base.eval_cases, cases),
                        (base.eval_lesions, lesion_table(frame))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    overlays = write_overlays(bundle, frame, base.slices_dir, base.raw_dir, base.overlays_dir)
    run_id = read_json(base.train_run)["run_id"]
    content = read_json(Path(base.slices_dir) / "meta.json").get("content_digests", {}).get(split, "unknown")
    with tracking.start_run(base.experiment, run_id=run_id) as run:
        # what makes two recorded scores comparable: the same cases, images, labels and scoring code
        run.set_tags({"test_content_digest": content, "eval_code_digest": eval_code_digest(),
                      "lesionwise_config": params.lesionwise})
        flat = {f"test_{region}_{k}": v for region, stats in summary.items() if isinstance(stats, dict)
                for k, v in stats.items()}
        run.log_metrics(flat)
        for path in (base.eval_report, base.eval_cases, base.eval_lesions):
            run.log_artifact(path)
        for path in overlays:
            run.log_artifact(path, "overlays")
    return summary
