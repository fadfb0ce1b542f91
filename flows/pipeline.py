"""Prefect flow: the DVC pipeline, one task per stage (`dvc repro <stage>`), in order.

DVC decides what is stale, so a second run with nothing changed skips every stage; Prefect adds retries
(with backoff on download), logs, timings and schedules. One run drives dvc in a workspace at a time.

    python -m flows.pipeline [--workdir .] [--wait-s 0]
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from brats_seg.orchestration import STAGES, pipeline_summary, run_dvc_stage, workspace_lock


@task(name="dvc-repro", task_run_name="dvc repro {stage}")
def dvc_stage(stage: str, workdir: str) -> dict:
    return run_dvc_stage(stage, workdir, get_run_logger())


@flow(name="brats-seg-pipeline")
def pipeline(workdir: str = ".", stages: list[str] | None = None, lock_wait_s: float = 0.0) -> dict:
    """Run the pipeline's stages in order; returns the summary (stages run or skipped, model, metrics)."""
    logger = get_run_logger()
    results = []
    with workspace_lock(workdir, lock_wait_s):
        for stage in stages or list(STAGES):
            retries = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=10)} \
                if stage == "download" else {}
            results.append(dvc_stage.with_options(**retries)(stage, workdir))
    summary = pipeline_summary(workdir, results)
    ran = [r["stage"] for r in results if r["ran"]]
    logger.info("stages run: %s; skipped: %s", ", ".join(ran) or "none",
                ", ".join(r["stage"] for r in results if not r["ran"]) or "none")
    if "model" in summary:
        model = summary["model"]
        logger.info("model %s v%s @%s", model["name"], model["version"], model["alias"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--wait-s", type=float, default=0.0, help="wait this long for another run's lock")
    args = parser.parse_args()
    print(json.dumps(pipeline(args.workdir, lock_wait_s=args.wait_s), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
