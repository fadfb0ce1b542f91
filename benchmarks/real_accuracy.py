"""Accuracy on real patients: k-fold cross-validation through the project's own DVC stages, on the 12 real BraTS
cases beside the checkout (../shared/data/real-cohort: 10 BraTS 2018 cases; ../shared/data/real: 2 more).

For each fold the project is reproduced in a scratch git + DVC repository (``dvc repro evaluate``: download from a
local copy of the cases, validate, slice with ``slice.folds`` / ``slice.fold``, train with post-processing chosen
on the fold's validation patients, evaluate), and each test patient's per-region scores are read from
``reports/eval_cases.csv``. Over the folds every patient is tested once, by a model that never saw it. Prints one
row per patient (WT, TC and ET: legacy Dice, the official lesion-wise Dice and the legacy HD95), the means, the
command and the time of each fold. Not a CI test: minutes per fold on 2 CPU cores.

    python benchmarks/real_accuracy.py                          # 4 folds, 96 px, base 16, depth 3, 20 epochs, CPU
    python benchmarks/real_accuracy.py --folds 6 --epochs 40 --size 128 --base 32 --depth 4 --json out.json
    python benchmarks/real_accuracy.py --set train.schedule=cosine --set evaluate.tta=true   # levers of issue 19
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from brats_seg import TELEMETRY_OFF
from brats_seg.config import read_params
from brats_seg.data.layouts import discover_cases
from brats_seg.data.slicing import fitting_seeds, patient_id
from brats_seg.io.yaml12 import load_yaml

ROOT = Path(__file__).resolve().parent.parent
COHORTS = (ROOT.parent / "shared" / "data" / "real-cohort", ROOT.parent / "shared" / "data" / "real")
PROJECT_FILES = ("dvc.yaml", "params.yaml", "prefect.toml", ".gitignore", "data/.gitignore",
                 "data/validated/.gitignore", "models/.gitignore", "reports/.gitignore")
QUIET = {**TELEMETRY_OFF, "TQDM_DISABLE": "1"}  # DVC_NO_ANALYTICS too: its `dvc init` runs before core.analytics


def gather_cases(dst: Path) -> list[str]:
    """Copy every real case beside the checkout into ``dst`` (one folder, as ``download.source: local`` reads it;
    links out of the folder would be refused) and return their ids."""
    found = [case for folder in COHORTS if folder.is_dir() for case in discover_cases(folder)]
    if not found:
        sys.exit(f"no real cases in {' or '.join(map(str, COHORTS))}: this benchmark needs them beside the checkout")
    for case in found:
        shutil.copytree(Path(next(iter(case.images.values()))[0]).parent, dst / case.case_id)
    return sorted(c.case_id for c in found)


def make_project(repo: Path, params: dict, env: dict) -> None:
    """A scratch git + DVC repository holding this checkout's pipeline and ``params``."""
    for name in PROJECT_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "src", "flows"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)


def fold_params(args: argparse.Namespace, cases_dir: Path, seed: int, fold: int) -> dict:
    params = read_params(ROOT / "params.yaml")
    params["base"]["seed"] = seed
    params["download"].update(source="local", local={"path": str(cases_dir)})
    params["slice"].update(size=args.size, folds=args.folds, fold=fold)
    params["train"].update(epochs=args.epochs, base=args.base, depth=args.depth, batch_size=args.batch, lr=args.lr,
                           device=args.device, threads=args.threads)
    for assignment in args.set:  # a lever for every fold, e.g. train.schedule=cosine
        key, _, value = assignment.partition("=")
        *sections, leaf = key.split(".")
        node = params
        for name in sections:
            node = node.setdefault(name, {})
        node[leaf] = load_yaml(value)  # numbers as DVC and the stages read them: 3e-4 is 0.0003
    return params


def run_fold(repo: Path, params: dict, env: dict) -> tuple[pd.DataFrame, float]:
    """``dvc repro evaluate`` under ``params``; the test patients' rows of eval_cases.csv and the seconds it took."""
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", "evaluate"], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"dvc repro evaluate failed in {repo}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return pd.read_csv(repo / "reports" / "eval_cases.csv"), time.perf_counter() - start


def per_patient(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per test patient: fold, and per region Dice, lesion-wise Dice, HD95, precision, recall, and where
    the errors come from: lesions predicted and in the reference, and false positives (ml) more than 10 mm outside
    the reference's bounding box."""
    metrics = ["dice", "lesion_dice", "hd95", "precision", "recall", "pred_lesions", "ref_lesions", "far_fp_ml"]
    wide = rows.pivot_table(index=["case_id", "fold"], columns="region", values=metrics)
    wide.columns = [f"{region.upper()} {metric}" for metric, region in wide.columns]
    order = [f"{r} {m}" for r in ("WT", "TC", "ET") for m in metrics]
    return wide[[c for c in order if c in wide.columns]].reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: torch's default)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the per-patient rows and the means here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml value for every fold (repeatable), e.g. --set train.schedule=cosine "
                        "--set evaluate.tta=true: one lever per row of the accuracy table")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="brats-real-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    cases = gather_cases(work / "cases")
    seed = fitting_seeds([patient_id(c) for c in cases], (1.0, 0.0, 0.0), count=1, folds=args.folds)[0]
    repo = work / "project"
    # the scratch project's own code runs its stages, with this interpreter's dvc and python
    path = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    env = {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PATH": path,
           "PYTHONPATH": os.pathsep.join(filter(None, (str(repo / "src"), os.environ.get("PYTHONPATH"))))}
    make_project(repo, fold_params(args, work / "cases", seed, 0), env)
    rows, times = [], []
    for fold in range(args.folds):
        found, seconds = run_fold(repo, fold_params(args, work / "cases", seed, fold), env)
        rows.append(found.assign(fold=fold))
        times.append(seconds)
        print(f"fold {fold}: {found['case_id'].nunique()} test patients, {seconds:.0f} s", flush=True)
        print(per_patient(rows[-1]).round(3).to_string(index=False), flush=True)
    table = per_patient(pd.concat(rows, ignore_index=True))
    means = table.drop(columns=["case_id", "fold"]).mean()
    print(f"\n{len(cases)} real patients, {args.folds}-fold cross-validation (base.seed {seed}), "
          f"{args.size} px slices, U-Net base {args.base} depth {args.depth}, {args.epochs} epochs, lr {args.lr}, "
          f"regions WT/TC/ET, post-processing chosen per fold on its validation patients"
          f"{'; ' + ', '.join(args.set) if args.set else ''}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("command: python benchmarks/real_accuracy.py " + " ".join(sys.argv[1:]))
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
        print("\nmean over patients:\n" + means.to_string())
    print(f"time: {sum(times):.0f} s ({', '.join(f'{t:.0f}' for t in times)} s per fold)")
    if args.json:
        args.json.write_text(json.dumps({"patients": table.to_dict("records"), "means": means.to_dict(),
                                         "seconds": times, "seed": seed, "args": vars(args) | {
                                             "keep": str(args.keep), "json": str(args.json)}}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
