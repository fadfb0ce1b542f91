"""Serve the pipeline on the schedule in params.yaml (`schedule.cron`), promoting after each run.

    python -m flows.serve [--workdir .]

Runs in the foreground and submits runs on schedule; with no PREFECT_API_URL Prefect starts its own
temporary local server. Teams deploying to work pools use prefect.yaml instead (`prefect deploy`).
Each run checks the data source first: with nothing new, every stage after `source` is skipped and no model
version is registered; with new cases, download to register rerun and the gate compares the new challenger
with the champion on the challenger's test patients.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from brats_seg.base_params import ScheduleParams
from brats_seg.config import load_section, read_params
from brats_seg.errors import exit_on_user_error
from flows.failures import fail_on_user_error, run_name, server_start_in_one_sentence
from flows.pipeline import pipeline
from flows.promote import promote_flow


@flow(name="brats-seg-scheduled", flow_run_name=run_name("retrain+promote"))
@fail_on_user_error
def scheduled_pipeline(workdir: str = ".", lock_wait_s: float = 3600.0, dvc_wait_s: float = 3600.0) -> dict:
    """The pipeline, then the promotion gate. Waits up to an hour for another pipeline run or dvc process."""
    summary = pipeline(workdir, lock_wait_s=lock_wait_s, dvc_wait_s=dvc_wait_s)
    summary["promotion"] = promote_flow(workdir)
    return summary


def build_deployment(workdir: str = ".") -> RunnerDeployment:
    """The served deployment, its cron schedule taken from ``workdir``/params.yaml ``schedule``."""
    schedule = load_section(ScheduleParams, read_params(Path(workdir) / "params.yaml"), "schedule")
    return scheduled_pipeline.to_deployment(
        name="brats-seg-weekly", schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        parameters={"workdir": str(Path(workdir).resolve())}, tags=["brats-seg"],
        description="Retrain on schedule (dvc repro of every stage), then promote if better.")


@exit_on_user_error
@server_start_in_one_sentence
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    args = parser.parse_args()
    serve(build_deployment(args.workdir), pause_on_shutdown=False)


if __name__ == "__main__":
    main()
