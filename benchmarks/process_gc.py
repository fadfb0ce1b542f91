"""Each stage's process with brats-seg's collector settings (brats_seg.runtime) next to CPython's defaults, in one
process, on the same small project: the outputs must stay the same bytes, the CPU time is what changed.

  - project: the stage as ``dvc repro`` runs it (``python -m stages.NAME``): the youngest generation collected every
    10,000 allocations instead of 700, and the heap frozen at exit;
  - baseline: the same command with the collector left at CPython's defaults (what brats-seg did before).

    python benchmarks/process_gc.py                  # 5 tiny synthetic cases, 3 runs of each stage per setting
    python benchmarks/process_gc.py --repeats 5 --json out.json

The project is a scratch git + DVC repository holding this checkout's pipeline (the params the test suite uses:
32 x 32 slices, a base-8 U-Net of depth 2, 2 epochs), reproduced once; then every stage runs again, alternately
under each setting, and each run must write the same bytes into the stage's outputs that DVC caches as the first
run wrote (the ones marked ``cache: false`` in dvc.yaml hold run times). The register and report stages are left out
of that check (a run registers a new version), not out of the timing. CPU time is user + system of the stage's
process, from the kernel.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # real_accuracy's scratch project
from real_accuracy import QUIET, ROOT, make_project  # noqa: E402

sys.path.insert(0, str(ROOT))  # the test suite's tiny params, not a copy of them

from brats_seg.config import read_params  # noqa: E402
from tests.support.projects import TINY_PARAMS, merge_params  # noqa: E402

STAGES = ("source", "download", "validate", "slice", "train", "evaluate", "register", "report")
RECORDS_A_VERSION = {"register", "report"}
TINY = merge_params(TINY_PARAMS, {"promote": {"min_dice": 0.0}})
# The baseline: marks the collector as tuned already, so that the entry point leaves CPython's defaults in place.
BASELINE = ("import runpy, sys, brats_seg.runtime as r; r._tuned = True; sys.argv = [sys.argv[1]]; "
            "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def cpu_seconds(cmd: list[str], cwd: Path, env: dict) -> float:
    """Run ``cmd``; the user + system seconds of it and its children. A failed run stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cached_outputs(repo: Path) -> dict[str, list[Path]]:
    """Each stage's outputs that DVC caches (dvc.yaml's ``${base.x}`` resolved from params.yaml); the ones marked
    ``cache: false`` hold run times and are left out."""
    base = read_params(repo / "params.yaml")["base"]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    resolve = functools.partial(re.sub, r"\$\{base\.(\w+)\}", lambda m: str(base[m[1]]))
    out = {}
    for name, stage in stages.items():
        entries = [entry if isinstance(entry, dict) else {entry: {}} for entry in stage.get("outs", [])]
        out[name] = [repo / resolve(path) for entry in entries for path, flags in entry.items()
                     if (flags or {}).get("cache", True)]
    return out


def digest(paths: list[Path]) -> str:
    """sha256 over the names and bytes of every file under ``paths``."""
    h = hashlib.sha256()
    for path in paths:
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                h.update(str(file.relative_to(path.parent)).encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each stage per setting (default 3)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    bin_dir = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="brats-seg-gc-") as tmp:
        repo = Path(tmp) / "project"
        env = {**os.environ, **QUIET, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(repo / "src")}
        env.pop("MLFLOW_TRACKING_URI", None)  # the scratch project's own store
        make_project(repo, merge_params(read_params(ROOT / "params.yaml"), TINY), env)
        cpu_seconds(["dvc", "repro"], repo, env)
        outputs, rows = cached_outputs(repo), []
        for stage in STAGES:
            written = digest(outputs[stage])
            seconds = {"baseline": 0.0, "project": 0.0}
            for _ in range(args.repeats):
                for name, cmd in (("baseline", [sys.executable, "-c", BASELINE, f"stages.{stage}"]),
                                  ("project", [sys.executable, "-m", f"stages.{stage}"])):
                    seconds[name] += cpu_seconds(cmd, repo, env) / args.repeats
                    if stage not in RECORDS_A_VERSION and digest(outputs[stage]) != written:
                        sys.exit(f"the {stage} stage ({name}) wrote other outputs than the first run")
            rows.append({"stage": stage, **{k: round(v, 2) for k, v in seconds.items()},
                         "ratio": round(seconds["baseline"] / seconds["project"], 2)})
            print(f"{stage:9s} baseline {seconds['baseline']:6.2f} s  project {seconds['project']:6.2f} s  "
                  f"{rows[-1]['ratio']:.2f}x", flush=True)
    total = {k: sum(r[k] for r in rows) for k in ("baseline", "project")}
    print(f"{'all':9s} baseline {total['baseline']:6.2f} s  project {total['project']:6.2f} s  "
          f"{total['baseline'] / total['project']:.2f}x  (CPU seconds per run of each stage, mean of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps({"stages": rows, "total": total, "repeats": args.repeats}, indent=2))


if __name__ == "__main__":
    main()
