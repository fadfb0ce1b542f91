"""The demo: the whole pipeline through Prefect, promotion, then one case segmented (what `make demo` runs).

    python -m flows.demo
"""

from __future__ import annotations

import pandas as pd
import torch
from prefect import flow

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section, read_params
from brats_seg.data.layouts import discover_cases
from brats_seg.errors import exit_on_user_error
from brats_seg.inference.bundle import ModelBundle, cohort_summary, cohort_warning
from brats_seg.orchestration.driver import working_directory
from brats_seg.orchestration.history import DEMO_BRANCH, record_run
from brats_seg.predict import describe_case, predict_case
from brats_seg.registry import tracking
from brats_seg.registry.resolve import DEFAULT_MODEL, resolve_model
from brats_seg.reporting.summary import current_aliases
from flows.failures import run_name, server_start_in_one_sentence
from flows.pipeline import REGION_ORDER, pipeline, stages_line
from flows.promote import promote_flow


@flow(name="brats-seg-demo", flow_run_name=run_name("demo"))
def demo(workdir: str = ".") -> dict:
    """Pipeline, promotion, and the champion's mask for the first test case."""
    summary = pipeline(workdir, log_summary=False)  # report() says it
    summary["promotion"] = promote_flow(workdir, log_decision=False)  # report() says it
    with working_directory(workdir):
        if "model" in summary:  # after the promotion: the aliases as they are now
            summary["model"]["aliases"] = current_aliases(summary["model"])
        base = load_section(BaseParams, read_params("params.yaml"), "base")
        summary["test_cases"] = pd.read_csv(base.eval_cases).to_dict("records")
        cases = pd.read_parquet(f"{base.slices_dir}/cases.parquet")
        case_id = cases[cases["split"] == "test"]["case_id"].iloc[0]
        has_champion = summary["promotion"]["promoted"] or "already" in summary["promotion"]["reason"]
        model = DEFAULT_MODEL if has_champion else base.model
        # the stages that load a network say when there is no GPU: the demo's one prediction does not say it again
        bundle: ModelBundle = resolve_model(model, "auto" if torch.cuda.is_available() else "cpu")
        (case,) = discover_cases(f"{base.raw_dir}/{case_id}")
        summary["prediction"] = {**predict_case(case, bundle, "predictions"), "model": bundle.origin,
                                 "cohort": cohort_summary(bundle), "warning": cohort_warning(bundle)}
    return summary


def patient_lines(rows: list[dict], means: dict) -> list[str]:
    """Each test patient's Dice per region, legacy and lesion-wise (official BraTS rules), on its own grid; then
    the means."""
    if not rows:
        return []
    lines = ["test patients (own grid; Dice / lesion-wise Dice, HD95):"]
    for case_id in dict.fromkeys(r["case_id"] for r in rows):
        parts = [f"{r['region'].upper()} {r['dice']:.3f} / {r.get('lesion_dice', float('nan')):.3f}, "
                 f"{r['hd95']:.1f} mm" for r in rows if r["case_id"] == case_id]
        lines.append(f"  {case_id:<24} " + "; ".join(parts))
    lines.append("  mean                     " + "; ".join(
        f"{region.upper()} {s['dice_mean']:.3f} / {s.get('lesion_dice_mean', float('nan')):.3f}, median "
        f"{s['hd95_median']:.1f} mm" for region, s in sorted(means.items(), key=lambda kv: REGION_ORDER.get(kv[0], 9))))
    return lines


def report(summary: dict) -> str:
    """What a person reads at the end of `make demo`."""
    lines = ["", stages_line(summary["stages"])]
    model, promo = summary.get("model", {}), summary["promotion"]
    lines.append(f"model: {model.get('name')} v{model.get('version')} @{', @'.join(model.get('aliases', []))}; "
                 f"promotion: {'promoted to champion' if promo['promoted'] else 'not promoted'} ({promo['reason']})")
    lines.extend(patient_lines(summary.get("test_cases", []), summary.get("test", {})))
    p = summary["prediction"]
    written = p.get("label_map") or p["mask"]
    lines.append(f"predicted {p['case_id']} with {p['model']}, {p['cohort']}: {describe_case(p).split(': ', 1)[1]} "
                 f"(provenance in {written.replace('.nii.gz', '.json')})")
    if p.get("warning"):
        lines.append(f"warning: {p['warning']}")
    if summary.get("commit"):
        lines.append(f"recorded as commit {summary['commit'][:10]} on branch {DEMO_BRANCH}")
    lines += ["the run report (opens offline in any browser): reports/index.html",
              "first `source .venv/bin/activate`, then:"]
    if summary.get("commit"):  # an experiment needs the commit it varies
        lines.append("  try a variant: dvc exp run -S train.lr=3e-4, then dvc metrics diff")
    lines += ["  look at the runs: mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db --host 127.0.0.1 "
              "--workers 1 (open http://127.0.0.1:5000)",
              "  trace the champion: brats-seg lineage models:/brats-unet@champion --verify"]
    return "\n".join(lines)


@exit_on_user_error
@server_start_in_one_sentence
def main() -> None:
    from brats_seg.cli import summary as pipeline_summary

    result = demo()
    model = result.get("model", {})
    result["commit"] = record_run(".", f"demo: pipeline run on the synthetic cohort, {model.get('name')} "
                                       f"v{model.get('version')}")
    if result["commit"] and model.get("run_id"):  # the model's lineage names the commit that holds its inputs
        tracking.set_run_tags(model["run_id"], {"git_recorded_commit": result["commit"]})
    print(pipeline_summary(per_case=False))  # noqa: T201
    print(report(result))  # noqa: T201


if __name__ == "__main__":
    main()
