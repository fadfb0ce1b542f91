"""Runner of the DVC stage `report`: the self-contained run report, logged to the model's MLflow run.

The report decides: besides what the run made, it shows the promotion gate as it stands when the report is
written (the same :func:`brats_seg.registry.promotion.decide` that `brats-seg promote` runs, with nothing recorded), the
champion and this run's model on the same test patients, who is in which split, and what a reader must know
before trusting a number (synthetic data, few test patients, quarantined cases).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from brats_seg.base_params import BaseParams
from brats_seg.inference.bundle import MIN_REAL_PATIENTS
from brats_seg.io.atomic import atomic_path
from brats_seg.io.tables import read_json
from brats_seg.models.config import DESCRIPTIONS
from brats_seg.registry import gate, tracking, versions
from brats_seg.registry.params import PromoteParams
from brats_seg.registry.promotion import Preview, preview
from brats_seg.reporting.report import (
    curve_section,
    evaluation_section,
    gate_section,
    lineage_section,
    overlay_section,
    render_report,
    split_section,
    validation_section,
    warnings_section,
)

# Fewer test patients than this and the report says that the gate's difference between two models may be chance.
MIN_TEST_PATIENTS = 20


def model_lineage(registered: dict, run: dict, aliases: list[str] | None) -> dict:
    """The lineage lines of the report: version and its aliases when the report was written, run, commit, code and
    data digests, and the run's params."""
    tags = run["tags"]
    shown = ", ".join(f"@{a}" for a in aliases) if aliases else "none"
    chosen, asked = tags.get("threshold"), run["params"].get("train.threshold")
    threshold = f"{chosen} (chosen on the validation patients)" if chosen and asked == "auto" else \
        chosen or asked or "0.5"
    return {"model": f"{registered['name']} v{registered['version']} (aliases at report time: {shown})",
            "probability threshold": threshold, "post-processing": tags.get("postprocess") or "none",
            "MLflow run": registered["run_id"],
            "git commit": f"{tags.get('git_commit')} (dirty: {tags.get('git_dirty')})",
            "DVC experiment": tags.get("dvc_exp_name") or "none (a plain dvc repro)",
            "code digest": tags.get("code_digest"), "raw data md5": tags.get("dvc_raw_md5"),
            "slices md5": tags.get("dvc_slices_md5"), "split digest": tags.get("split_digest"),
            "training fingerprint": tags.get("fingerprint"), "params": run["params"]}


def model_summary(registered: dict, params: dict) -> str:
    """The report's subtitle: which model this is, in words (its run's logged params)."""
    def param(key: str) -> str:
        return str(params.get(key, "?"))

    regions = "WT, TC, ET" if param("train.target") == "regions" else "whole tumour"
    modalities = param("slice.modalities").strip("[]()").replace("'", "").replace('"', "")
    described = DESCRIPTIONS.get(param("train.model"), DESCRIPTIONS["unet"])  # runs logged before it: a U-Net
    sizes = f"(base {param('train.base')}, depth {param('train.depth')})"
    model = f"a {described} {sizes}"
    if str(params.get("train.folds", "0")) != "0":
        model = f"an ensemble of {param('train.folds')} {described}s {sizes}, one per fold of the training patients,"
    context = str(params.get("slice.context", "0"))
    around = "" if context == "0" else " (with the slice above and below as context)" if context == "1" else \
        f" (with the {context} slices above and below as context)"
    return (f"{registered['name']} v{registered['version']}: {model} on {param('slice.size')} x "
            f"{param('slice.size')} axial slices{around} of {modalities}, "
            f"segmenting {regions}; {param('train.epochs')} epochs, lr {param('train.lr')}; MLflow run "
            f"{registered['run_id']}")


def gate_view(registered: dict, seen: Preview | None, cases: pd.DataFrame, params: PromoteParams) -> dict:
    """The gate's decision at report time as plain numbers (the report's card and its ``#gate-data`` JSON)."""
    at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    regions = gate.version_regions(seen.challenger["tags"]) if seen else tuple(dict.fromkeys(cases["region"]))
    metric = gate.resolve(params.metric, regions)
    base = {"at": at, "challenger": registered["version"], "metric": metric,
            "metric_name": gate.describe(metric, regions), "test_patients": int(cases["case_id"].nunique()),
            "min_dice": params.min_dice, "min_improvement": params.min_improvement}
    if seen is None:
        return {**base, "champion": None, "decision": "unregistered",
                "reason": f"{registered['name']} v{registered['version']} is not in the registry at "
                          f"{tracking.tracking_uri()}: run `dvc repro register` against this store first"}
    tags = seen.challenger["tags"]
    if seen.decision is None:
        return {**base, "champion": seen.challenger["version"], "decision": "champion",
                "challenger_value": gate.from_tags(tags, metric, regions),
                "reason": f"the decision that made it champion: {tags.get('promotion_reason', 'not recorded')}"}
    d = seen.decision
    return {**base, "champion": d.champion_version, "decision": "promote" if d.promote else "keep",
            "reason": d.reason, "challenger_value": d.challenger_dice, "champion_value": d.champion_dice,
            "champion_rescored": d.champion_rescored, "test_patients": d.test_patients or base["test_patients"]}


def comparison_table(seen: Preview | None, own: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per test patient, each score the gate averages: this run's model, the champion's, and the difference."""
    if seen is None or seen.champion_cases is None or seen.decision is None:
        return pd.DataFrame()
    challenger, champion = seen.challenger["version"], seen.decision.champion_version
    theirs = seen.champion_cases
    out = pd.DataFrame({"case_id": sorted(set(own["case_id"]))})
    for region, kind in gate.parts(metric, gate.version_regions(seen.challenger["tags"])):
        name = f"{region.upper()} {gate.KINDS[kind]}"
        mine, other = (frame[frame["region"] == region].set_index("case_id")[kind] if kind in frame
                       else pd.Series(dtype=float) for frame in (own, theirs))  # an older run's table may lack it
        out[f"{name} v{challenger}"] = out["case_id"].map(mine)
        out[f"{name} v{champion}"] = out["case_id"].map(other)
        out[f"{name} difference"] = out[f"{name} v{challenger}"] - out[f"{name} v{champion}"]
    return out


def reader_warnings(meta: dict, gate_data: dict, validation: dict) -> list[str]:
    """What a reader must know before trusting the numbers of this report."""
    found, source = [], meta.get("source", "unknown")
    train_patients = int(meta.get("patients", {}).get("train", 0))
    if source == "synthetic":
        found.append(f"The model was trained and tested on synthetic cases ({train_patients} training patients): "
                     f"this report demonstrates the pipeline and says nothing about real patients.")
    elif not meta:
        found.append("The slice stage's meta.json is missing, so what the model learnt from is unknown.")
    elif train_patients < MIN_REAL_PATIENTS:
        found.append(f"The model learnt from {train_patients} {'real ' if source != 'unknown' else ''}patients only "
                     f"(BraTS models learn from "
                     f"hundreds; fewer than {MIN_REAL_PATIENTS} is a pilot): check every mask it writes.")
    patients = gate_data.get("test_patients") or 0
    if patients < MIN_TEST_PATIENTS:
        found.append(f"Only {patients} test patients decide the gate: a difference of a few hundredths between two "
                     f"models is within chance at this size (fewer than {MIN_TEST_PATIENTS}).")
    if validation.get("quarantined"):
        found.append(f"{validation['quarantined']} of {validation.get('cases')} cases were quarantined by validation "
                     f"and are in no split (table below).")
    if gate_data["decision"] == "keep" and gate_data["reason"].startswith(("refused", "could not")):
        found.append(f"The gate could not compare this model with the champion: {gate_data['reason']}")
    return found


def report_stage(base: BaseParams, params: PromoteParams | None = None) -> Path:
    """Write ``base.report`` from the pipeline's reports and the registry as it is now; log it to the run."""
    params = params or PromoteParams()
    registered = read_json(base.registered_report)
    run = tracking.get_run(registered["run_id"])
    version = versions.model_version(registered["name"], version=registered["version"])
    seen = None if version is None else preview(version, params, base)
    quarantine_csv = Path(base.validation_reports) / "quarantine.csv"
    quarantine = pd.read_csv(quarantine_csv) if quarantine_csv.is_file() else pd.DataFrame()
    cases_parquet = Path(base.slices_dir) / "cases.parquet"
    splits = pd.read_parquet(cases_parquet) if cases_parquet.is_file() else pd.DataFrame()
    meta_json = Path(base.slices_dir) / "meta.json"
    meta = read_json(meta_json) if meta_json.is_file() else {}
    own = pd.read_csv(base.eval_cases)
    validation = read_json(base.validation_metrics)
    gate_data = gate_view(registered, seen, own, params)
    sections = {
        "warnings": warnings_section(reader_warnings(meta, gate_data, validation)),
        "gate": gate_section(gate_data, comparison_table(seen, own, gate_data["metric"])),
        "evaluation": evaluation_section(read_json(base.eval_report), own),
        "overlays": overlay_section(base.overlays_dir),
        "splits": split_section(splits),
        "validation": validation_section(validation, quarantine),
        "training": curve_section(base.train_curve_png),
        "lineage": lineage_section(model_lineage(registered, run, None if version is None else version["aliases"])),
    }
    page = render_report(sections, "brats-seg run report", model_summary(registered, run["params"]))
    with atomic_path(base.report) as tmp:
        tmp.write_text(page)
    with tracking.start_run(base.experiment, run_id=registered["run_id"]) as active:
        active.log_artifact(base.report)
    return Path(base.report)
