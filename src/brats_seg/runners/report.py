"""Runner of the DVC stage `report`: the self-contained run report, logged to the model's MLflow run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from brats_seg import tracking
from brats_seg.config import BaseParams
from brats_seg.io.atomic import atomic_path
from brats_seg.io.tables import read_json
from brats_seg.report import (
    curve_section,
    evaluation_section,
    lineage_section,
    overlay_section,
    render_report,
    validation_section,
)


def model_lineage(registered: dict, run: dict) -> dict:
    """The lineage lines of the report: version, run, commit, code and data digests, and the run's params."""
    tags = run["tags"]
    return {"model": f"{registered['name']} v{registered['version']} (@{registered['alias']})",
            "MLflow run": registered["run_id"],
            "git commit": f"{tags.get('git_commit')} (dirty: {tags.get('git_dirty')})",
            "code digest": tags.get("code_digest"), "raw data md5": tags.get("dvc_raw_md5"),
            "slices md5": tags.get("dvc_slices_md5"), "split digest": tags.get("split_digest"),
            "training fingerprint": tags.get("fingerprint"), "params": run["params"]}


def report_stage(base: BaseParams) -> Path:
    """Write ``base.report`` from the pipeline's reports and log it to the training run."""
    registered = read_json(base.registered_report)
    run = tracking.get_run(registered["run_id"])
    quarantine_csv = Path(base.validation_reports) / "quarantine.csv"
    quarantine = pd.read_csv(quarantine_csv) if quarantine_csv.is_file() else pd.DataFrame()
    sections = {
        "validation": validation_section(read_json(base.validation_metrics), quarantine),
        "training": curve_section(base.train_curve_png),
        "evaluation": evaluation_section(read_json(base.eval_report), pd.read_csv(base.eval_cases)),
        "overlays": overlay_section(base.overlays_dir),
        "lineage": lineage_section(model_lineage(registered, run)),
    }
    page = render_report(sections, "brats-seg run report",
                         f"{registered['name']} v{registered['version']}, MLflow run {registered['run_id']}")
    with atomic_path(base.report) as tmp:
        tmp.write_text(page)
    with tracking.start_run(base.experiment, run_id=registered["run_id"]) as active:
        active.log_artifact(base.report)
    return Path(base.report)
