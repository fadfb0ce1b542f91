"""Serve the pipeline on the schedule in params.yaml (`schedule.cron`), promoting after each run.

    python -m flows.serve [--workdir .]

Runs in the foreground and submits runs on schedule; with no PREFECT_API_URL Prefect starts its own
temporary local server. Teams deploying to work pools use prefect.yaml instead (`prefect deploy`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from brats_seg.config import read_params
from flows.pipeline import pipeline
from flows.promote import promote_flow


@flow(name="brats-seg-scheduled")
def scheduled_pipeline(workdir: str = ".") -> dict:
    """The pipeline, then the promotion gate."""
    summary = pipeline(workdir, lock_wait_s=3600)
    summary["promotion"] = promote_flow(workdir)
    return summary


def build_deployment(workdir: str = ".") -> RunnerDeployment:
    """The served deployment, its cron schedule taken from ``workdir``/params.yaml ``schedule``."""
    schedule = read_params(Path(workdir) / "params.yaml").get("schedule") or {}
    cron = schedule.get("cron", "0 3 * * 1")
    return scheduled_pipeline.to_deployment(
        name="brats-seg-weekly", schedules=[Cron(cron, timezone=schedule.get("timezone", "UTC"))],
        parameters={"workdir": str(Path(workdir).resolve())}, tags=["brats-seg"],
        description="Retrain on schedule (dvc repro of every stage), then promote if better.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    args = parser.parse_args()
    serve(build_deployment(args.workdir), pause_on_shutdown=False)


if __name__ == "__main__":
    main()
