"""Slice-stage throughput against a decode-only baseline, in one run.

Generates N full-size synthetic BraTS cases (240 x 240 x 155, five .nii.gz files each), then measures
  - baseline: nibabel decoding the same five files per case, one process;
  - ours: the slice stage (decode, reorient, crop, z-score, resize, label resize, shard write) with 1..W
    worker processes;
  - the same stage on a Dask cluster: a LocalCluster of D single-threaded worker processes on this machine,
    standing and warm (its workers have imported the code, as a cluster's do after its first stage), beside the
    local pool of D workers, whose processes every stage run starts anew.
Prints cases/s, the per-core ratio ours/baseline (target: at least 0.5), the speed-up per worker count and
Dask vs the local pool; writes JSON to benchmarks/results/slice_throughput.json.

    python benchmarks/slice_throughput.py [--cases 8] [--workers 1 2] [--dask-workers 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: it reads its settings at import

import argparse
import functools
import hashlib
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brats_seg.data.layouts import canonical_files, list_canonical_cases, write_case
from brats_seg.data.slicing import fitting_seeds, run_slice
from brats_seg.data.spec import SliceParams
from brats_seg.data.synthetic import make_case
from brats_seg.orchestration.executors import LOCAL, Executor, run_parallel


def _write_one(index: int, root: str) -> None:
    case = make_case(index, seed=123)
    write_case(root, case.case_id, case.images, case.seg, case.affine)


def decode_only(raw: Path) -> float:
    """Seconds to decode every file of every case with nibabel, one process."""
    start = time.perf_counter()
    for case in list_canonical_cases(raw):
        for path in canonical_files(case).values():
            np.asarray(nib.load(str(path)).dataobj)
    return time.perf_counter() - start


def slice_stage(raw: Path, out: Path, workers: int, executor: Executor = LOCAL) -> float:
    manifest = pd.DataFrame({"case_id": [p.name for p in list_canonical_cases(raw)]})
    params = SliceParams(workers=workers)
    seed = (fitting_seeds(list(manifest["case_id"]), params.split, count=1) or [0])[0]  # one that fills every split
    start = time.perf_counter()
    run_slice(params, raw, manifest, out, seed=seed, executor=executor)
    return time.perf_counter() - start


def _warm() -> None:
    """What a worker of a standing cluster has done by its second stage: import the code (torch with it)."""
    import importlib

    importlib.import_module("brats_seg.data.slicing")
    importlib.import_module("torch")


def slice_on_dask(raw: Path, out: Path, workers: int) -> float:
    """Seconds for the slice stage on a warm LocalCluster of ``workers`` single-threaded processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as client:
            client.run(_warm)
        return slice_stage(raw, out, workers, Executor(cluster.scheduler_address, "a LocalCluster"))


def same_files(a: Path, b: Path) -> bool:
    """Whether two output folders hold the same files, byte for byte (by sha256)."""
    def digests(root: Path) -> dict[str, str]:
        return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file()}

    return digests(a) == digests(b)


def _print_dask(dask: dict, base_rate: float) -> None:
    w = dask["workers"]
    label = f"slice stage, Dask {w} worker(s)"
    per_core = dask["cases_per_s"] / w
    print(f"{label:30}{dask['cases_per_s']:10.2f}{per_core:10.2f}{per_core / base_rate:11.2f}{dask['speedup']:10.2f}")
    print(f"\nDask {w} workers vs local pool {w} workers: {dask['vs_local_pool']:.2f}x cases/s; vs decode only: "
          f"{dask['cases_per_s'] / base_rate:.2f}x; shards, index and meta identical to the local pool's: "
          f"{'yes' if dask['identical_to_local'] else 'NO'}")


def main() -> None:
    # the stages' warnings about a tiny synthetic cohort are not what is measured
    logging.getLogger("brats_seg").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default 1..cores)")
    parser.add_argument("--dask-workers", type=int, default=2, help="workers of the Dask LocalCluster (0: skip)")
    parser.add_argument("--out", default="benchmarks/results/slice_throughput.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    counts = args.workers or list(range(1, cores + 1))
    if args.dask_workers and args.dask_workers not in counts:
        counts.append(args.dask_workers)  # the local pool it is compared with
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        print(f"generating {args.cases} full-size synthetic cases ...", flush=True)
        run_parallel(functools.partial(_write_one, root=str(raw)), list(range(1, args.cases + 1)), workers=0)
        decode_only(raw)  # warm the page cache so both sides read from memory
        base_s = decode_only(raw)
        rows = []
        for w in counts:
            ours_s = slice_stage(raw, Path(tmp) / f"slices{w}", w)
            rows.append({"workers": w, "seconds": ours_s, "cases_per_s": args.cases / ours_s})
        dask = None
        if args.dask_workers:
            on_dask, on_pool = Path(tmp) / "slices-dask", Path(tmp) / f"slices{args.dask_workers}"
            dask_s = slice_on_dask(raw, on_dask, args.dask_workers)
            dask = {"workers": args.dask_workers, "seconds": dask_s, "cases_per_s": args.cases / dask_s,
                    "identical_to_local": same_files(on_pool, on_dask)}
    base_rate = args.cases / base_s
    one = next((r for r in rows if r["workers"] == 1), rows[0])
    print(f"\n{'':30}{'cases/s':>10}{'per core':>10}{'vs decode':>11}{'speed-up':>10}")
    print(f"{'decode only (nibabel), 1 proc':30}{base_rate:10.2f}{base_rate:10.2f}{1.0:11.2f}{'':>10}")
    for r in rows:
        per_core = r["cases_per_s"] / r["workers"]
        r["per_core_ratio"] = per_core / base_rate
        r["speedup"] = r["cases_per_s"] / one["cases_per_s"]
        label = f"slice stage, {r['workers']} worker(s)"
        print(f"{label:30}{r['cases_per_s']:10.2f}{per_core:10.2f}{r['per_core_ratio']:11.2f}{r['speedup']:10.2f}")
    if dask:
        pool = next(r for r in rows if r["workers"] == dask["workers"])
        dask["vs_local_pool"] = dask["cases_per_s"] / pool["cases_per_s"]
        dask["speedup"] = dask["cases_per_s"] / one["cases_per_s"]
        _print_dask(dask, base_rate)
    result = {"cases": args.cases, "cores": cores, "machine": platform.processor() or platform.machine(),
              "decode_cases_per_s": base_rate, "slice": rows, "target_per_core_ratio": 0.5, "dask": dask}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
