"""Prefect flow: the promotion gate (same as `brats-seg promote`).

When the challenger was tested on another split than the champion (new data), the champion is re-scored on
the challenger's test patients from this workspace's data, so run it in the workspace that produced the
challenger.

    python -m flows.promote [--workdir .] [--version N] [--force]
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, get_run_logger

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section, read_params
from brats_seg.errors import exit_on_user_error
from brats_seg.orchestration.driver import working_directory
from brats_seg.registry.gate import label
from brats_seg.registry.params import PromoteParams, RegisterParams
from brats_seg.registry.promotion import promote
from flows.failures import fail_on_user_error, run_name, server_start_in_one_sentence


@flow(name="brats-seg-promote", flow_run_name=run_name("promote"))
@fail_on_user_error
def promote_flow(workdir: str = ".", version: str | None = None, force: bool = False) -> dict:
    """Move the `champion` alias to the challenger when it is better on the same test patients."""
    with working_directory(workdir):
        params = read_params("params.yaml")
        name = load_section(RegisterParams, params, "register").model_name
        record = promote(name, load_section(PromoteParams, params, "promote"), version, force,
                         load_section(BaseParams, params, "base"))
    get_run_logger().info("%s", describe(name, record))
    return record


def describe(name: str, record: dict) -> str:
    """The decision in one line: outcome, reason, test patients, split and both scores."""
    def score(value: float | None) -> str:
        return "none" if value is None else f"{value:.4f}"

    patients = "unknown" if record["test_patients"] is None else record["test_patients"]
    metric = label(record.get("metric", "wt_dice"))
    champion = "no champion before" if record["previous_champion"] is None else (
        f"champion v{record['previous_champion']} {metric} {score(record['champion_dice'])}"
        f"{' (re-scored)' if record['champion_rescored'] else ''}")
    return (f"{name} v{record['version']}: {'promoted to champion' if record['promoted'] else 'not promoted'} "
            f"({record['reason']}); test patients {patients}, split {str(record['test_split'])[:12]}, "
            f"challenger {metric} {score(record['challenger_dice'])}, {champion}")


@exit_on_user_error
@server_start_in_one_sentence
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--version", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(json.dumps(promote_flow(args.workdir, args.version, args.force), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
