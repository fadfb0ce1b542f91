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
def promote_flow(workdir: str = ".", version: str | None = None, force: bool = False,
                 log_decision: bool = True) -> dict:
    """Move the `champion` alias to the challenger when it is better on the same test patients. The decision is
    logged in one line (:func:`describe`) unless ``log_decision`` is off: `make demo` prints it itself."""
    with working_directory(workdir):
        params = read_params("params.yaml")
        name = load_section(RegisterParams, params, "register").model_name
        record = promote(name, load_section(PromoteParams, params, "promote"), version, force,
                         load_section(BaseParams, params, "base"))
    if log_decision:
        get_run_logger().info("%s", describe(name, record))
    return record


def describe(name: str, record: dict) -> str:
    """The decision in one line: outcome, reason, test patients, split and both scores, each said once (most
    reasons already give the scores, and a comparison the split)."""
    def score(value: float | None) -> str:
        return "none" if value is None else f"{value:.4f}"

    metric = label(record.get("metric", "wt_dice"))
    reason, previous, split = record["reason"], record["previous_champion"], str(record["test_split"])[:12]
    parts = [] if f"split {split}" in reason else [  # what is not known (a model without its test record) is left out
        text for value, text in ((record["test_patients"], f"test patients {record['test_patients']}"),
                                 (record["test_split"], f"split {split}")) if value is not None]
    if score(record["challenger_dice"]) not in reason:  # each number once: most reasons already give it
        parts.append(f"challenger {metric} {score(record['challenger_dice'])}")
    if previous is None and "no champion" not in reason:
        parts.append("no champion before")
    elif previous is not None and score(record["champion_dice"]) not in reason:
        parts.append(f"champion v{previous} {metric} {score(record['champion_dice'])}"
                     f"{' (re-scored)' if record['champion_rescored'] else ''}")
    return (f"{name} v{record['version']}: {'promoted to champion' if record['promoted'] else 'not promoted'} "
            f"({reason}){'; ' if parts else ''}{', '.join(parts)}")


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
