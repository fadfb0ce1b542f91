"""What a pipeline run did, for the flows and the demo: the stages run or skipped, the registered model with
the aliases it holds now, and the test metrics."""

from __future__ import annotations

from pathlib import Path

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section, read_params
from brats_seg.io.tables import read_json
from brats_seg.orchestration.driver import working_directory
from brats_seg.registry import versions


def pipeline_summary(workdir: str | Path, results: list[dict]) -> dict:
    """Stages run or skipped, with timings, and the registered model with its test metrics."""
    base = load_section(BaseParams, read_params(Path(workdir) / "params.yaml"), "base")
    summary: dict = {"stages": results}
    registered = Path(workdir) / base.registered_report
    if registered.is_file():
        summary["model"] = read_json(registered)
        with working_directory(workdir):  # the aliases as they are now, not as registration left them
            summary["model"]["aliases"] = current_aliases(summary["model"])
    evaluation = Path(workdir) / base.eval_report
    if evaluation.is_file():
        summary["test"] = {region: {k: v for k, v in stats.items() if k.endswith(("dice_mean", "hd95_median"))}
                           for region, stats in read_json(evaluation).items() if isinstance(stats, dict)}
    return summary


def current_aliases(model: dict) -> list[str]:
    """The aliases a registered version (``{"name", "version", "alias"}``) holds now; the alias it was registered
    with when the registry cannot be asked."""
    try:
        found = versions.model_version(model["name"], version=str(model["version"]))
    except Exception:  # noqa: BLE001 - an unreachable or changed store: say what registration said
        found = None
    return sorted(found["aliases"]) if found else [model.get("alias", "?")]
