"""Training past one process: DistributedDataParallel 2 processes vs 1, and streaming vs in-memory training sets.

  - DDP: the same global batch trained by 1 process (all cores) and by 2 processes under torchrun (gloo on
    CPU, NCCL on GPUs, a GPU each); samples/s of brats_seg.training.loop's epoch loop after a warm-up epoch.
  - memory: the train stage's data path (brats_seg.runners.train.open_splits, then train_model) run twice in
    fresh processes on one cohort of shards: the split loaded into memory, and streamed from the shards
    (train.memory_gb: 0); peak resident memory and time of each, and whether the two models are identical.

    python benchmarks/train_scale.py                                   # CPU-sized defaults
    python benchmarks/train_scale.py --device cuda --size 128 --base 32 --depth 4 --batch 64 --slices 20000

On GPUs, --nproc sets the processes of the DDP row (one per GPU: `--nproc 8` on an 8-GPU host).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: it reads its settings at import

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from brats_seg.io.shards import write_shard  # noqa: E402
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet  # noqa: E402
from brats_seg.training.distributed import Ranks, process_group  # noqa: E402
from brats_seg.training.feed import DeviceData
from brats_seg.training.loop import _parallel, _train_epoch, make_step  # noqa: E402
from brats_seg.training.params import TrainParams

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import make_slices  # noqa: E402

SCRIPT = str(Path(__file__).resolve())


def _params(args: argparse.Namespace, nproc: int = 1, epochs: int = 2) -> TrainParams:
    return TrainParams(epochs=epochs, batch_size=args.batch, base=args.base, depth=args.depth, norm="instance",
                       device=args.device, nproc=nproc, resume=False, compile=args.compile)


def ddp_epoch(args: argparse.Namespace, ranks: Ranks) -> float:
    """Samples/s of one epoch (after a warm-up epoch) of the training loop, as this process group runs it."""
    params = _params(args, ranks.world)
    device = ranks.device
    data = make_slices(args.slices, args.channels, args.size)
    torch.manual_seed(0)
    model = UNet(ModelConfig(args.channels, 1, args.base, args.depth, norm="instance")).to(
        device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = make_step(_parallel(model, params, device, ranks), opt, params, device, ranks)
    feed = DeviceData(data, ("wt",), device)
    gen = torch.Generator(device=device).manual_seed(0)
    _train_epoch(step, feed, params, gen, 0, ranks)  # warm-up (and compilation)
    ranks.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    _train_epoch(step, feed, params, gen, 1, ranks)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ranks.barrier()
    seconds = time.perf_counter() - start
    return (len(data) // args.batch) * args.batch / seconds


def bench_ddp(args: argparse.Namespace, tmp: Path) -> dict:
    """1 process (every core) vs ``args.nproc`` processes under torchrun (cores shared out) on one global batch."""
    with process_group(1, args.device) as ranks:
        one = ddp_epoch(args, ranks)
    out = tmp / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
           SCRIPT, "--ddp-worker", str(out), *_shared_args(args)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    many = json.loads(out.read_text())["samples_per_s"]
    return {"nproc": args.nproc, "one_process_samples_per_s": one, "ddp_samples_per_s": many, "ratio": many / one}


def _shared_args(args: argparse.Namespace) -> list[str]:
    return ["--device", args.device, "--size", str(args.size), "--channels", str(args.channels), "--base",
            str(args.base), "--depth", str(args.depth), "--batch", str(args.batch), "--slices", str(args.slices),
            *(["--compile"] if args.compile else [])]


def write_cohort(root: Path, args: argparse.Namespace) -> None:
    """Shards, index and nothing else, as the slice stage lays them out: 64 slices per case."""
    (root / "shards").mkdir(parents=True)
    rows = []
    for split, n, seed in (("train", args.slices, 1), ("val", max(args.batch, args.slices // 20), 2)):
        data = make_slices(n, args.channels, args.size, seed=seed)
        for k in range(0, n, 64):
            case = f"{split}_{k // 64:04d}"
            shard = f"shards/{case}.npz"
            part = slice(k, k + 64)
            write_shard(root / shard, data.images[part], data.labels[part], np.arange(len(data.z[part])))
            for row, labels in enumerate(data.labels[part]):
                rows.append({"case_id": case, "z": row, "shard": shard, "row": row, "split": split,
                             "tumour_pixels": int((labels > 0).sum())})
    pd.DataFrame(rows).to_parquet(root / "index.parquet")


def memory_run(args: argparse.Namespace, slices: Path, budget: float, out: Path) -> None:
    """In this fresh process: the train stage's data path and one training run; writes peak RSS, time, weights."""
    from brats_seg.data.dataset import ShardedSplit, read_index
    from brats_seg.runners.train import open_splits, peak_rss
    from brats_seg.training.loop import train_model

    start = time.perf_counter()
    train, val = open_splits(slices, read_index(slices), budget)
    result = train_model(_params(args, epochs=1), train, val, 0, out.with_suffix(".ckpt"), args.channels)
    seconds = time.perf_counter() - start
    torch.save(result.model.state_dict(), out.with_suffix(".pt"))
    out.write_text(json.dumps({"peak_rss_mb": peak_rss() / 2**20, "seconds": seconds,
                               "streamed": isinstance(train, ShardedSplit)}))


def read_rate(slices: Path, batch: int) -> float:
    """Slices/s of the streaming reader on random batches (files in the page cache, as after the first epoch)."""
    from brats_seg.data.dataset import open_split

    split = open_split(slices, "train")
    rng = np.random.default_rng(0)
    steps = max(1, len(split) // batch)
    split.take(np.arange(min(len(split), 4 * batch)))  # warm
    start = time.perf_counter()
    for _ in range(steps):
        split.take(rng.choice(len(split), batch, replace=False))
    return steps * batch / (time.perf_counter() - start)


def bench_memory(args: argparse.Namespace, tmp: Path) -> dict:
    slices = tmp / "slices"
    write_cohort(slices, args)
    data_mb = sum(p.stat().st_size for p in (slices / "shards").glob("*.npz")) / 2**20
    reader = read_rate(slices, args.batch)
    runs = {}
    for mode, budget in (("in_memory", "inf"), ("streamed", "0")):
        out = tmp / f"{mode}.json"
        subprocess.run([sys.executable, SCRIPT, "--memory-worker", str(slices), budget, str(out),
                        *_shared_args(args)], check=True)
        runs[mode] = json.loads(out.read_text())
    a, b = (torch.load(tmp / f"{m}.pt", weights_only=True) for m in ("in_memory", "streamed"))
    same = all(torch.equal(a[k], b[k]) for k in a)
    streamed, in_memory = runs["streamed"], runs["in_memory"]
    return {"shards_mb": data_mb, "reader_slices_per_s": reader, **runs,
            "peak_ratio": streamed["peak_rss_mb"] / in_memory["peak_rss_mb"],
            "time_ratio": streamed["seconds"] / in_memory["seconds"], "identical_models": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slices", type=int, default=3000,
                        help="training slices (the DDP row: a tenth of them, at least 8 batches)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--skip", choices=("ddp", "memory"), action="append", default=[])
    parser.add_argument("--out", default="benchmarks/results/train_scale.json")
    parser.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        with process_group(int(os.environ["WORLD_SIZE"]), args.device) as ranks:
            rate = ddp_epoch(args, ranks)
            if ranks.main:
                Path(args.ddp_worker).write_text(json.dumps({"samples_per_s": rate}))
        return
    if args.memory_worker:
        slices, budget, out = args.memory_worker
        memory_run(args, Path(slices), float(budget), Path(out))
        return
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"device: {name} ({os.cpu_count()} cores); {args.size}x{args.size}x{args.channels}, U-Net base {args.base} "
          f"depth {args.depth}, instance norm, global batch {args.batch}")
    result = {"device": name, "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if "ddp" not in args.skip:
            ddp_args = argparse.Namespace(**{**vars(args), "slices": max(args.batch * 8, args.slices // 10)})
            ddp = result["ddp"] = bench_ddp(ddp_args, Path(tmp))
            print(f"\nDDP, {ddp_args.slices} slices per epoch:{'samples/s':>24}")
            print(f"{'  1 process':44}{ddp['one_process_samples_per_s']:10.1f}")
            label = f"  {ddp['nproc']} processes (torchrun)"
            print(f"{label:44}{ddp['ddp_samples_per_s']:10.1f}")
            print(f"ratio {ddp['nproc']} processes / 1: {ddp['ratio']:.2f}")
        if "memory" not in args.skip:
            mem = result["memory"] = bench_memory(args, Path(tmp))
            print(f"\ntrain stage on {args.slices} slices ({mem['shards_mb']:.0f} MB of shards), 1 epoch:"
                  f"{'peak RSS MB':>14}{'seconds':>10}")
            for mode, label in (("in_memory", "  split loaded into memory"),
                                ("streamed", "  streamed from the shards")):
                run = mem[mode]
                print(f"{label:62}{run['peak_rss_mb']:10.0f}{run['seconds']:10.1f}")
            print(f"streamed / in memory: peak memory {mem['peak_ratio']:.2f}, time {mem['time_ratio']:.2f}; "
                  f"identical models: {'yes' if mem['identical_models'] else 'NO'}")
            print(f"the reader alone: {mem['reader_slices_per_s']:,.0f} slices/s in random batches of {args.batch}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
