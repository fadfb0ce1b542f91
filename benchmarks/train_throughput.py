"""Training throughput: our train loop next to a plain baseline, in one process.

  - baseline: fp32, eager, a torch DataLoader whose Dataset reads every slice from its .npz shard on each
    __getitem__ (what a first implementation does), Adam, soft Dice;
  - ours: brats_seg.training.loop's step: the set held in device memory, batches drawn and augmented on the
    device (flips, rotations, intensity), bf16 autocast and channels_last on CUDA, optional
    torch.compile, losses accumulated on the device;
  - ours, streamed: the same step, the set left in its shards (a training set over train.memory_gb),
    each batch read by a background thread while the previous one trains.
Reports slices/s after warm-up, the ratio, and the share of step time spent producing the batch.

    python benchmarks/train_throughput.py                      # CPU-sized defaults
    python benchmarks/train_throughput.py --device cuda --size 128 --base 32 --depth 4 --batch 256 --compile
    python benchmarks/train_throughput.py --device cuda ... --epochs 20 --slices 30000   # end to end

With --epochs, also times brats_seg.training.loop.train_model end to end (validation and checkpoints included) on
a set of --slices training slices: the first epoch (compilation, warm-up) and the rest.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from brats_seg.data.dataset import SliceSet, open_split  # noqa: E402
from brats_seg.io.shards import read_shard, write_shard  # noqa: E402
from brats_seg.models.config import ModelConfig
from brats_seg.models.unet import UNet  # noqa: E402
from brats_seg.training.augment import augment_batch  # noqa: E402
from brats_seg.training.feed import DeviceData, StreamData
from brats_seg.training.loop import make_step, train_model  # noqa: E402
from brats_seg.training.losses import segmentation_loss  # noqa: E402
from brats_seg.training.params import TrainParams


def make_slices(n: int, channels: int, size: int, seed: int = 0) -> SliceSet:
    """Random z-scored slices with disc-shaped tumours: realistic shapes and dtypes, no data needed."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, channels, size, size), dtype=np.float32).astype(np.float16)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0.3, 0.7, (n, 2)) * size
    radii = rng.uniform(0.05, 0.2, n) * size
    dist2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    disc = dist2 < radii[:, None, None] ** 2
    labels = (disc * 2).astype(np.uint8)
    return SliceSet(images, labels, np.repeat(np.arange(n // 64 + 1), 64)[:n].astype(str), np.arange(n))


class ShardItems(torch.utils.data.Dataset):
    """The baseline's dataset: every item opens its shard and takes one slice."""

    def __init__(self, shards: list[Path], per_shard: int) -> None:
        self.items = [(s, r) for s in shards for r in range(per_shard)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard, row = self.items[i]
        data = read_shard(shard)
        x = torch.from_numpy(data["images"][row].astype(np.float32))
        y = torch.from_numpy((data["labels"][row] > 0).astype(np.float32))[None]
        return x, y


def bench_baseline(data: SliceSet, args: argparse.Namespace, device: torch.device, tmp: Path) -> dict:
    per_shard = 64
    shards = []
    for k in range(0, len(data), per_shard):
        shards.append(write_shard(tmp / f"s{k}.npz", data.images[k:k + per_shard], data.labels[k:k + per_shard],
                                  data.z[k:k + per_shard]))
    loader = torch.utils.data.DataLoader(ShardItems(shards, per_shard), batch_size=args.batch, shuffle=True,
                                         drop_last=True, num_workers=args.workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = UNet(ModelConfig(data.images.shape[1], 1, args.base, args.depth)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    return _timed(lambda: iter(loader), lambda batch: _plain_step(model, opt, batch, device), args, device)


def _plain_step(model, opt, batch, device) -> None:
    x, y = (t.to(device, non_blocking=True) for t in batch)
    opt.zero_grad()
    loss = segmentation_loss(model(x), y)
    loss.backward()
    opt.step()


def bench_ours(data: SliceSet, args: argparse.Namespace, device: torch.device, shards: Path | None = None) -> dict:
    """Our step on batches from device memory, or with ``shards`` (a slice-stage folder) from the shards."""
    params = TrainParams(batch_size=args.batch, base=args.base, depth=args.depth, compile=args.compile,
                         device=device.type)
    torch.manual_seed(0)
    fmt = torch.channels_last
    model = UNet(ModelConfig(data.images.shape[1], 1, args.base, args.depth)).to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = make_step(model, opt, params, device)
    feed = DeviceData(data, ("wt",), device) if shards is None else StreamData(open_split(shards, "train"), ("wt",),
                                                                              device)
    gen = torch.Generator(device=device).manual_seed(0)

    def batches():
        while True:
            order = torch.randperm(len(feed), generator=gen, device=device)
            starts = list(range(0, len(feed) - args.batch + 1, args.batch))
            for x, y in feed.batches(order, starts, args.batch):
                yield augment_batch(x, y, gen)

    return _timed(batches, lambda batch: step(*batch), args, device)


def write_split(data: SliceSet, root: Path) -> Path:
    """``data`` as a slice-stage folder (64-slice shards and an index), all of it the train split."""
    rows = []
    for k in range(0, len(data), 64):
        shard = f"shards/{k // 64:04d}.npz"
        write_shard(root / shard, data.images[k:k + 64], data.labels[k:k + 64], data.z[k:k + 64])
        rows += [{"case_id": f"case{k // 64:04d}", "z": r, "shard": shard, "row": r, "split": "train"}
                 for r in range(len(data.labels[k:k + 64]))]
    pd.DataFrame(rows).to_parquet(root / "index.parquet")
    return root


def bench_end_to_end(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict:
    """``args.epochs`` epochs of the real training function; seconds for epoch 1 and for the rest."""
    train = make_slices(args.slices, args.channels, args.size, seed=1)
    val = make_slices(max(args.batch, args.slices // 20), args.channels, args.size, seed=2)
    params = TrainParams(epochs=args.epochs, batch_size=args.batch, base=args.base, depth=args.depth,
                         compile=args.compile, device=device.type, resume=False)
    marks = [time.perf_counter()]
    train_model(params, train, val, 0, tmp / "e2e.pt", args.channels,
                on_epoch=lambda epoch, metrics: marks.append(time.perf_counter()))
    first, rest = marks[1] - marks[0], marks[-1] - marks[1]
    return {"epochs": args.epochs, "slices": args.slices, "first_epoch_s": first, "remaining_epochs_s": rest,
            "steady_slices_per_s": args.slices * (args.epochs - 1) / rest if args.epochs > 1 else None}


def _timed(make_iter, run_step, args: argparse.Namespace, device: torch.device) -> dict:
    """slices/s over ``args.steps`` steps after ``args.warmup``, and the time share of fetching batches."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = make_iter()
    for _ in range(args.warmup):
        batch = _next(it, make_iter)
        run_step(batch)
    sync()
    fetch = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = _next(it, make_iter)
        if args.measure_fetch:
            sync()
        fetch += time.perf_counter() - t0
        run_step(batch)
    sync()
    total = time.perf_counter() - start
    return {"slices_per_s": args.steps * args.batch / total, "fetch_share": fetch / total}


def _next(it, make_iter):
    try:
        return next(it)
    except StopIteration:
        return next(make_iter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--slices", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="baseline DataLoader workers")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--measure-fetch", action="store_true", default=True)
    parser.add_argument("--epochs", type=int, default=0, help="also time N epochs end to end")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = make_slices(args.slices, args.channels, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        base = bench_baseline(data, args, device, Path(tmp))
    ours = bench_ours(data, args, device)
    with tempfile.TemporaryDirectory() as tmp:
        streamed = bench_ours(data, args, device, write_split(data, Path(tmp)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\ndevice: {name}; {args.size}x{args.size}x{args.channels}, U-Net base {args.base} depth {args.depth}, "
          f"batch {args.batch}, {args.steps} steps after {args.warmup} warm-up")
    print(f"{'':58}{'slices/s':>10}{'fetch share':>13}")
    print(f"{'baseline: fp32 eager, DataLoader from shards':58}{base['slices_per_s']:10.1f}{base['fetch_share']:13.1%}")
    label = "ours: device-resident data, on-device augmentation" + (", compiled" if args.compile else "")
    print(f"{label:58}{ours['slices_per_s']:10.1f}{ours['fetch_share']:13.1%}")
    print(f"{'ours, streamed from the shards (over train.memory_gb)':58}{streamed['slices_per_s']:10.1f}"
          f"{streamed['fetch_share']:13.1%}")
    ratio = ours["slices_per_s"] / base["slices_per_s"]
    print(f"ratio ours / baseline: {ratio:.2f}; streamed / in memory: "
          f"{streamed['slices_per_s'] / ours['slices_per_s']:.2f}")
    result = {"device": name, "args": vars(args), "baseline": base, "ours": ours, "ratio": ratio,
              "ours_streamed": streamed}
    if args.epochs:
        with tempfile.TemporaryDirectory() as tmp:
            e2e = bench_end_to_end(args, device, Path(tmp))
        print(f"end to end: {e2e['epochs']} epochs of {e2e['slices']} slices: first epoch "
              f"{e2e['first_epoch_s']:.1f} s, the other {e2e['epochs'] - 1} {e2e['remaining_epochs_s']:.1f} s")
        result["end_to_end"] = e2e
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
