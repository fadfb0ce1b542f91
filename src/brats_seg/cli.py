"""The brats-seg command line: summaries and tools around the pipeline's artifacts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section, read_params
from brats_seg.console import setup_logging
from brats_seg.errors import UserError, exit_on_user_error
from brats_seg.io.tables import json_safe, read_json


def summary(params_path: str = "params.yaml", per_case: bool = True) -> str:
    """A short text summary of the pipeline's current outputs (what `make demo` prints; the demo prints the test
    patients itself, with lesion-wise Dice, so it asks for no per-case lines here)."""
    base = load_section(BaseParams, read_params(params_path), "base")
    lines = ["brats-seg pipeline summary"]
    sources = Path(base.raw_dir) / "sources.json"
    if sources.is_file():
        src = read_json(sources)
        lines.append(f"  download : {src['n_cases']} labelled, {src['n_unlabelled']} unlabelled cases "
                     f"from source '{src['source']}' in {base.raw_dir}")
    if Path(base.validation_metrics).is_file():
        v = read_json(base.validation_metrics)
        lines.append(f"  validate : {v['ok']} ok, {v['quarantined']} quarantined of {v['cases']} "
                     f"(data docs: {base.validation_reports}/data_docs/index.html)")
    meta_path = Path(base.slices_dir) / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path)
        per = ", ".join(f"{s} {meta['cases'][s]} cases / {meta['slices'][s]} slices "
                        f"({meta['tumour_slices'][s]} with tumour)" for s in ("train", "val", "test"))
        p = meta["params"]
        context = f", context {p['context']}" if p.get("context") else ""
        lines.append(f"  slice    : {p['size']}x{p['size']} x {len(p['modalities'])} modalities{context}; {per}")
        lines.append(f"             split digest {meta['split_digest'][:12]}")
    if Path(base.train_report).is_file() and Path(base.train_run).is_file():
        t = {**read_json(base.train_report), **read_json(base.train_run)}
        members = [t[k] for k in sorted(t) if k.startswith("fold") and k.endswith("_best_epoch")]
        chosen = f"an ensemble of {len(members)}, members' best epochs {', '.join(map(str, members))}" if members \
            else f"epoch {t['best_epoch']}"
        if "best_val_lesion_dice" in t:
            chosen += f", chosen by lesion-wise Dice {t['best_val_lesion_dice']:.3f}"
        lines.append(f"  train    : {t['epochs']} epochs on {t['device']}, {t['train_slices']} slices; best validation "
                     f"Dice {t['best_val_dice']:.3f} ({chosen}), threshold {t.get('threshold', 0.5):g}; MLflow run "
                     f"{t['run_id']}")
    if Path(base.eval_report).is_file() and Path(base.eval_cases).is_file():
        lines.extend(_eval_lines(base, per_case))
    if len(lines) == 1:
        raise UserError("no pipeline outputs yet; run `dvc repro` (or `make demo`) first.")
    return "\n".join(lines)


def _volume(row: dict) -> str:
    """The reference's volume in ml (voxels from reports written before volumes were)."""
    ml = row.get("ref_ml")
    return f"{row['ref_voxels']} voxels" if ml is None or ml != ml else f"{ml:.1f} ml"


def _eval_lines(base: BaseParams, per_case: bool = True) -> list[str]:
    import pandas as pd

    report = read_json(base.eval_report)
    if not per_case:
        return [f"  evaluate : {report['n_cases']} test patients, each on its own grid (below)"]
    cases = pd.read_csv(base.eval_cases)
    lines = [f"  evaluate : {report['n_cases']} test cases, per patient in the original grid:"]
    for row in cases.to_dict("records"):
        hd = "n/a" if pd.isna(row["hd95"]) else f"{row['hd95']:.1f} mm"
        lesion = "" if pd.isna(row.get("lesion_dice", float("nan"))) else f" / lesion-wise {row['lesion_dice']:.3f}"
        lines.append(f"             {row['case_id']:<28} {row['region'].upper()} Dice {row['dice']:.3f}{lesion}  "
                     f"HD95 {hd}  (reference {_volume(row)})")
    order = ("wt", "tc", "et")  # outside in, as BraTS lists them (eval.json's keys are sorted)
    for region, stats in sorted(report.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9):
        if isinstance(stats, dict):
            lesion = f"; lesion-wise Dice mean {stats['lesion_dice_mean']:.3f}" if "lesion_dice_mean" in stats else ""
            lines.append(f"             {region.upper()} Dice mean {stats['dice_mean']:.3f}, median "
                         f"{stats['dice_median']:.3f}{lesion} (slice-level mean, not comparable: "
                         f"{stats['slice_level_dice_mean']:.3f})")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brats-seg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="summarise the pipeline's current outputs")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--json", action="store_true", help="print the metrics files as JSON instead")
    p = sub.add_parser("score", help="score a predicted label map or mask against a reference (JSON)")
    p.add_argument("--ref", required=True, help="reference label map (.nii.gz)")
    p.add_argument("--pred", required=True, help="prediction: a label map, or a 0/1 whole-tumour mask with "
                   "--labels binary")
    p.add_argument("--labels", choices=["brats2020", "brats2023", "msd", "binary"], default="brats2020",
                   help="label scheme of both files (brats2023: enhancing tumour is 3; msd: Decathlon Task01), "
                   "or binary: the prediction is a 0/1 mask, scored as whole tumour (WT) only against the "
                   "reference's non-zero voxels")
    p.add_argument("--lesionwise", metavar="CONFIG", default=None,
                   help="also the official BraTS lesion-wise metrics (brats-evaluation) of config CONFIG: gli, mets, "
                   "ped, MenRT, MenPre or GoAT (per region under \"lesionwise\")")
    p = sub.add_parser("predict", help="segment new cases on each input's grid: label maps (a model of several "
                       "regions) or binary whole-tumour masks")
    p.add_argument("cases", nargs="+", metavar="CASE_DIR", help="folders holding cases in any supported naming")
    p.add_argument("--model", default=None, help="models:/NAME@ALIAS or a model file (default: "
                   "models:/brats-unet@champion)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--labels", choices=["brats2020", "brats2023", "msd"], default=None,
                   help="label convention of the label maps a model of several regions writes (default: the one its "
                   "training data came in)")
    p.add_argument("--wt-mask", action="store_true", help="also write the binary whole-tumour mask "
                   "<case>_mask.nii.gz (a WT-only model writes only that)")
    p.add_argument("--tta", choices=["model", "on", "off"], default="model",
                   help="test-time mirroring: as the model was evaluated (its evaluate.tta, the default), or on / off "
                   "(4 passes averaged over flips; written in each mask's sidecar)")
    p = sub.add_parser("promote", help="promote the challenger to champion when it is better")
    p.add_argument("--model", default=None, help="registered model name (default: register.model_name)")
    p.add_argument("--version", default=None, help="version to consider (default: the challenger alias)")
    p.add_argument("--force", action="store_true", help="promote without the comparison")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("lineage", help="trace a registered model to its code, params, data and metrics; or, with "
                       "--case, list every registered model version whose splits held a patient")
    p.add_argument("model_uri", metavar="MODEL_URI", nargs="?", help="e.g. models:/brats-unet@champion")
    p.add_argument("--case", metavar="ID", default=None, help="a case id or patient id: list every registered "
                   "model version whose train, val or test split contained that patient, with the split")
    p.add_argument("--verify", action="store_true",
                   help="exit 1 and name what drifted when the workspace's params, code or data no longer match")
    p.add_argument("--json", action="store_true")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("versions", help="every registered version of a model: aliases, test WT Dice, latest "
                       "promotion decision, run")
    p.add_argument("--model", default=None, help="registered model name (default: register.model_name)")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("audit", help="every promotion decision of a model (or one version), oldest first: what, "
                       "when, by whom, with its numbers; never overwritten")
    p.add_argument("--model", default=None, help="registered model name (default: register.model_name)")
    p.add_argument("--version", default=None, help="only this version's decisions")
    p.add_argument("--json", action="store_true")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("params", help="set values in params.yaml (like dvc exp run -S, without running)")
    p.add_argument("action", choices=["set"])
    p.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("clean", help="remove the pipeline's rebuildable outputs where params.yaml puts them now, "
                       "and nothing a user made (make clean)")
    p.add_argument("what", nargs="?", choices=("outputs", "checkpoints", "all"), default="outputs",
                   help="outputs (the default: DVC outputs, reports, download staging), checkpoints (the training "
                   "checkpoints, hours of an interrupted run) or all")
    p = sub.add_parser("copy-store", help="copy every experiment, run (params, metric histories, tags, inputs, "
                       "artifacts) and registered model (versions under the same numbers, aliases) of one MLflow store "
                       "into another, e.g. the local store into the team's server; run again, it copies only what is "
                       "missing")
    p.add_argument("--from", dest="source", default="sqlite:///mlflow/mlflow.db", metavar="URI",
                   help="the store to copy (default: this project's local store, sqlite:///mlflow/mlflow.db)")
    p.add_argument("--to", dest="destination", default=None, metavar="URI",
                   help="the store to copy into (default: MLFLOW_TRACKING_URI)")
    return parser


def _run(args: argparse.Namespace) -> int:
    """Carry out one command; returns the exit status."""
    if args.command == "summary":
        base = load_section(BaseParams, read_params(args.params), "base")
        if args.json:
            paths = (base.validation_metrics, f"{base.slices_dir}/meta.json", base.train_report, base.eval_report)
            sys.stdout.write(json.dumps({p: read_json(p) for p in paths if Path(p).is_file()}, indent=2) + "\n")
        else:
            sys.stdout.write(summary(args.params) + "\n")
    elif args.command == "score":
        from brats_seg.evaluation.scoring import score_files

        scores = score_files(args.ref, args.pred, args.labels, lesionwise=args.lesionwise)
        sys.stdout.write(json.dumps(json_safe(scores), indent=2) + "\n")
    elif args.command == "predict":
        from brats_seg.predict import describe_case, predict_dirs

        tta = {"model": None, "on": True, "off": False}[args.tta]
        for r in predict_dirs(args.cases, args.model, args.out, args.device, args.labels, args.wt_mask, tta):
            sys.stdout.write(describe_case(r) + "\n")
    elif args.command == "promote":
        from brats_seg.registry.params import PromoteParams, RegisterParams
        from brats_seg.registry.promotion import promote

        params = read_params(args.params)
        name = args.model or load_section(RegisterParams, params, "register").model_name
        record = promote(name, load_section(PromoteParams, params, "promote"), args.version, args.force,
                         load_section(BaseParams, params, "base"))
        sys.stdout.write(json.dumps(json_safe(record), indent=2) + "\n")
    elif args.command == "versions":
        from brats_seg.registry import versions
        from brats_seg.registry.audit import format_versions
        from brats_seg.registry.params import RegisterParams

        name = args.model or load_section(RegisterParams, read_params(args.params), "register").model_name
        sys.stdout.write(format_versions(name, versions.model_versions(name)) + "\n")
    elif args.command == "audit":
        from brats_seg.registry.audit import format_history, history
        from brats_seg.registry.params import RegisterParams

        name = args.model or load_section(RegisterParams, read_params(args.params), "register").model_name
        records = history(name, args.version)
        sys.stdout.write((json.dumps(records, indent=2) if args.json else format_history(name, records)) + "\n")
    elif args.command == "lineage" and args.case is not None:
        return _case_lineage(args)
    elif args.command == "lineage":
        from brats_seg.registry.lineage import format_chain, lineage, verify

        if args.model_uri is None:
            raise UserError("brats-seg lineage needs a MODEL_URI (e.g. models:/brats-unet@champion) or --case ID.")
        chain = lineage(args.model_uri)
        sys.stdout.write((json.dumps(chain, indent=2) if args.json else format_chain(chain)) + "\n")
        if args.verify:
            drift = verify(chain, read_params(args.params))
            for line in drift:
                sys.stdout.write(f"DRIFT    {line}\n")
            sys.stdout.write("verify   workspace matches the model's params, code and data\n" if not drift else "")
            return 1 if drift else 0
    elif args.command == "params":
        from brats_seg.orchestration.outputs import check_output_folders
        from brats_seg.params_file import set_params
        from brats_seg.sections import check_params

        root = Path(args.params).parent  # dvc.yaml's folder: a path set must not hold a folder of the user's
        changed = set_params(args.params, args.assignments, check_params, lambda doc: check_output_folders(root, doc))
        for key, value in changed.items():
            sys.stdout.write(f"{key} = {value}\n")
    elif args.command == "clean":
        from brats_seg.orchestration.outputs import clean, describe

        sys.stdout.write(describe(clean(".", args.what)) + "\n")
    elif args.command == "copy-store":
        from brats_seg.registry.copy_store import copy_store, describe

        counts = copy_store(args.source, args.destination)
        sys.stdout.write(describe(counts, args.source, args.destination) + "\n")
    return 0


def _case_lineage(args: argparse.Namespace) -> int:
    """`brats-seg lineage --case ID`: every registered version whose splits held that patient."""
    from brats_seg.registry.lineage import case_lineage, format_case_lineage

    if args.model_uri is not None or args.verify:
        raise UserError("brats-seg lineage --case searches every registered model version; pass it without "
                        "MODEL_URI and --verify.")
    manifest = Path(load_section(BaseParams, read_params(args.params), "base").manifest) \
        if Path(args.params).is_file() else None
    images = set()
    if manifest is not None and manifest.is_file():  # the workspace knows the case's images: find renamed copies
        import pandas as pd

        rows = pd.read_parquet(manifest, columns=["case_id", "image_sha256"])
        images = set(rows.loc[rows["case_id"] == args.case, "image_sha256"])
    result = case_lineage(args.case, images)
    sys.stdout.write((json.dumps(result, indent=2) if args.json else format_case_lineage(result)) + "\n")
    return 0


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, with_time=False)  # a command's answer goes to stdout; its log lines stay short
    code = _run(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()

