"""Prefect flow: the DVC pipeline, one task per stage (`dvc repro <stage>`), in order.

DVC decides what is stale: the `source` stage checks the data source on every run, and with nothing new
every later stage is skipped. Prefect adds retries (with backoff on download), logs, timings and schedules.
One run drives dvc in a workspace at a time; a run that finds dvc busy (a manual `dvc repro`) waits for it.

    python -m flows.pipeline [--workdir .] [--wait-s 0] [--dvc-wait-s 300]
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from brats_seg.errors import exit_on_user_error
from brats_seg.orchestration.driver import (
    STAGES,
    flow_stages,
    run_dvc_stage,
    workspace_lock,
)
from brats_seg.reporting.summary import pipeline_summary
from brats_seg.sections import check_workspace_params
from flows.failures import fail_on_user_error, is_not_a_user_error, run_name, server_start_in_one_sentence


@task(name="dvc-repro", task_run_name="dvc repro {stage}")
def dvc_stage(stage: str, workdir: str, dvc_wait_s: float = 0.0, single: bool = False) -> dict:
    return run_dvc_stage(stage, workdir, get_run_logger(), busy_wait_s=dvc_wait_s, single=single)


@flow(name="brats-seg-pipeline", flow_run_name=run_name("pipeline"))
@fail_on_user_error
def pipeline(workdir: str = ".", stages: list[str] | None = None, lock_wait_s: float = 0.0,
             dvc_wait_s: float = 300.0, log_summary: bool = True) -> dict:
    """Run the pipeline's stages in order; returns the summary (each stage checked, ran or skipped, the model
    and its metrics). Waits up to ``lock_wait_s`` for another pipeline run, and up to ``dvc_wait_s`` per stage
    for any other dvc process, before failing with one sentence.

    The whole pipeline (:func:`flow_stages`) runs each known stage alone (`dvc repro --single-item`), in order,
    so that the source is checked once per run; a chosen list of ``stages``, and a stage of dvc.yaml that the
    flow does not know, bring their upstream stages up to date too (plain `dvc repro <stage>`). With
    ``log_summary`` (the default: a deployed or scheduled run, read in Prefect's UI) the run's last lines log the
    stages that ran and the model; a command line that prints the summary itself turns it off."""
    logger = get_run_logger()
    check_workspace_params(workdir)  # a bad value is one sentence before any stage runs
    results = []
    with workspace_lock(workdir, lock_wait_s):
        for stage in stages or flow_stages(workdir):
            retries = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=10),
                       "retry_condition_fn": is_not_a_user_error} if stage == "download" else {}
            single = stages is None and stage in STAGES
            results.append(dvc_stage.with_options(**retries)(stage, workdir, dvc_wait_s, single=single))
    summary = pipeline_summary(workdir, results)
    if not log_summary:  # a command line prints the summary itself (main, flows.demo): said once, not twice
        return summary
    logger.info("; ".join(f"{status}: {', '.join(r['stage'] for r in results if r['status'] == status) or 'none'}"
                          for status in ("checked", "ran", "skipped")))
    if "model" in summary:
        model = summary["model"]
        logger.info("model %s v%s @%s", model["name"], model["version"], ", @".join(model["aliases"]))
    return summary


@exit_on_user_error
@server_start_in_one_sentence
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--wait-s", type=float, default=0.0, help="wait this long for another pipeline run's lock")
    parser.add_argument("--dvc-wait-s", type=float, default=300.0,
                        help="per stage, wait this long for another dvc process (e.g. a manual dvc repro)")
    parser.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    args = parser.parse_args()
    check_workspace_params(args.workdir)  # here too: said before Prefect's temporary server starts (10 s or so)
    summary = pipeline(args.workdir, lock_wait_s=args.wait_s, dvc_wait_s=args.dvc_wait_s, log_summary=False)
    print(summary_lines(summary) if not args.json else json.dumps(summary, indent=2))  # noqa: T201


REGION_ORDER = {"wt": 0, "tc": 1, "et": 2}  # outside in, as BraTS lists them (eval.json's keys are sorted)


def stages_line(stages: list[dict]) -> str:
    """Each stage's status and time, on one line (this flow's printout and the demo's)."""
    return "stages: " + ", ".join(f"{r['stage']} {r['status']} ({r['seconds']:.0f} s)" for r in stages)


def summary_lines(summary: dict) -> str:
    """The run in a few lines: each stage's status and time, the model and its test Dice."""
    lines = [stages_line(summary["stages"])]
    if "model" in summary:
        model = summary["model"]
        lines.append(f"model:  {model['name']} v{model['version']} @{', @'.join(model['aliases'])}")
    test = summary.get("test", {})
    for region, stats in sorted(test.items(), key=lambda item: REGION_ORDER.get(item[0], len(REGION_ORDER))):
        lesion = f", lesion-wise Dice {stats['lesion_dice_mean']:.3f}" if "lesion_dice_mean" in stats else ""
        lines.append(f"test:   {region.upper()} Dice per case {stats['dice_mean']:.3f}{lesion}, HD95 median "
                     f"{stats['hd95_median']:.1f} mm")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
