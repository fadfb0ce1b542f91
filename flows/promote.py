"""Prefect flow: the promotion gate (same as `brats-seg promote`).

    python -m flows.promote [--workdir .] [--version N] [--force]
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, get_run_logger

from brats_seg.config import load_section, read_params
from brats_seg.orchestration import working_directory
from brats_seg.promotion import PromoteParams, promote
from brats_seg.runners.register import RegisterParams


@flow(name="brats-seg-promote")
def promote_flow(workdir: str = ".", version: str | None = None, force: bool = False) -> dict:
    """Move the `champion` alias to the challenger when it is better on the same test split."""
    with working_directory(workdir):
        params = read_params("params.yaml")
        name = load_section(RegisterParams, params, "register").model_name
        record = promote(name, load_section(PromoteParams, params, "promote"), version, force)
    get_run_logger().info("%s v%s: %s (%s)", name, record["version"],
                          "promoted to champion" if record["promoted"] else "not promoted", record["reason"])
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--version", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(json.dumps(promote_flow(args.workdir, args.version, args.force), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
