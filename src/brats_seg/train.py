"""Training the U-Net: soft Dice (+ optional BCE), Adam, per-epoch validation and resumable checkpoints.

A training set within the memory budget lives in device memory when it fits (else pinned host memory); a
larger one stays in its shards and each batch is read by a background thread while the previous one trains
(:class:`StreamData`), with the same sampling, so the same seed gives the same model either way. Batches are
drawn and augmented on the device; losses are accumulated on the device and read once per epoch. A
checkpoint with model, optimiser and RNG states is written atomically after every epoch; with ``resume`` an
interrupted run continues from it and ends where an uninterrupted run would. The best weights by validation
Dice (per case, in slice space) are the result.

With several processes (``train.nproc``, see :mod:`brats_seg.distributed`) every process draws the same
permutation of each epoch and trains on its own part of every global batch; Dice sums and gradients are
added up over processes, so a step is the global batch's step. Rank 0 alone validates and writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from brats_seg.augment import augment_batch
from brats_seg.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from brats_seg.config import check_training_memory, result_keys, runtime_field
from brats_seg.data.dataset import ShardedSplit, SliceSet
from brats_seg.data.labels import region_targets
from brats_seg.distributed import Ranks
from brats_seg.errors import DataError, UserError
from brats_seg.inference import pick_device, predict_slices
from brats_seg.losses import dice_loss_from_sums, segmentation_loss
from brats_seg.models.unet import UNet, UNetConfig
from brats_seg.progress import progress
from brats_seg.provenance import code_digest, code_manifest

log = logging.getLogger(__name__)

TARGET_REGIONS = {"wt": ("wt",), "regions": ("wt", "tc", "et")}
# Sane upper bounds: beyond them a value is a typo (1e9 epochs is 30 years of 1 s epochs), refused at load.
MAXIMA = {"epochs": 100_000, "batch_size": 65_536, "base": 4096, "depth": 10}


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """params.yaml ``train`` section."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    schedule: Literal["constant", "cosine", "poly"] = "constant"  # the learning rate over the epochs (lr_at)
    bce_weight: float = 1.0  # Dice + BCE per region: measured on real patients (README, Accuracy on real patients)
    target: Literal["wt", "regions"] = "regions"
    base: int = 32
    depth: int = 4
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    augment: bool = True
    # Where it runs (like base.executor): the fingerprint and the run record the device it resolved to.
    device: Literal["auto", "cpu", "cuda"] = runtime_field("auto")
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    resume: bool = runtime_field(True)
    threads: int = 0  # shapes the result: CPU kernels sum in per-thread order (see fingerprint)
    nproc: int = 1
    memory_gb: float | Literal["auto"] = runtime_field("auto")  # same rows, same order in memory or streamed
    postprocess: bool = True  # choose post-processing on the validation patients (brats_seg.postprocess)

    def __post_init__(self) -> None:
        from brats_seg.config import require, require_at_least, require_positive

        for key in ("epochs", "batch_size", "base", "depth"):
            require_at_least(f"train.{key}", getattr(self, key), 1)
        for key, most in MAXIMA.items():
            require(f"train.{key}", getattr(self, key), getattr(self, key) <= most, f"an integer from 1 to {most}")
        require_positive("train.lr", self.lr)
        require_at_least("train.bce_weight", self.bce_weight, 0)
        require_at_least("train.threads", self.threads, 0)
        require_at_least("train.nproc", self.nproc, 1)
        require("train.batch_size", self.batch_size, self.batch_size % self.nproc == 0,
                f"a multiple of train.nproc ({self.nproc}): each process trains on an equal part of every batch")
        if self.memory_gb != "auto":
            require_at_least("train.memory_gb", self.memory_gb, 0)
        require("train.base", self.base, self.norm != "group" or self.base in (1, 2, 4) or self.base % 8 == 0,
                "1, 2, 4 or a multiple of 8 when train.norm is 'group' (GroupNorm splits channels into 8 groups)")


def lr_at(params: TrainParams, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based): ``lr`` throughout (constant), or decayed from ``lr`` at the
    first epoch towards 0 after the last, by half a cosine (cosine) or nnU-Net's polynomial ``(1 - e / E) ** 0.9``
    (poly). A function of the epoch alone, so a resumed run goes on exactly where it stopped."""
    progress = epoch / params.epochs
    if params.schedule == "cosine":
        return params.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if params.schedule == "poly":
        return params.lr * (1.0 - progress) ** 0.9
    return params.lr


# The code that shapes a trained model: this module's import closure inside the project.
TRAINING_CODE = ("brats_seg.train",)


@dataclasses.dataclass
class TrainResult:
    model: UNet
    regions: tuple[str, ...]
    history: list[dict]
    best_epoch: int
    device: str


Split = SliceSet | ShardedSplit


def computation(params: TrainParams, device: str) -> dict:
    """What a training run computes, resolved on this host (``device``: the torch device type it runs on):
    every setting not marked runtime, with ``amp`` as it takes effect (bf16 autocast on CUDA only), the CPU
    threads in use (their count changes CPU kernels' summation order, so the weights), the device type, and the
    torch and numpy versions. ``auto`` and ``cpu`` on a CPU-only host are one computation, as are both ``amp``
    values on a CPU."""
    settings = {k: getattr(params, k) for k in result_keys(TrainParams)}
    settings["amp"] = params.amp and device == "cuda"
    settings["threads"] = (params.threads or torch.get_num_threads()) if device == "cpu" else None
    return {**settings, "device": device, "torch": torch.__version__, "numpy": np.__version__}


def fingerprint(params: TrainParams, train_set: Split, val_set: Split, seed: int, device: str,
                code: str | None = None) -> str:
    """Identifies a training run: the resolved :func:`computation` (every setting that shapes the result,
    epochs included, the device type, torch and numpy versions), the seed, the full content of the train and
    validation slices, and the training code's digest.

    A checkpoint resumes only under the same fingerprint, so a resume can never hand back weights made
    from other data, other settings or other code.
    """
    code = code or code_digest(code_manifest(TRAINING_CODE))
    h = hashlib.sha256(json.dumps([computation(params, device), seed, code], sort_keys=True, default=list).encode())
    for data in (train_set, val_set):  # the same bytes whether the split is in memory or in its shards
        h.update(f"{data.shape}".encode())
        for images, labels in data.chunks(256):
            h.update(memoryview(np.ascontiguousarray(images, dtype=np.float16)).cast("B"))
            h.update(memoryview(np.ascontiguousarray(labels, dtype=np.uint8)).cast("B"))
        for array in (data.case_ids.astype(str), data.z):
            array = np.ascontiguousarray(array)
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(memoryview(array).cast("B"))
    return h.hexdigest()[:16]


def train_model(params: TrainParams, train_set: Split, val_set: Split, seed: int, checkpoint: Path,
                slice_channels: int, on_epoch: Callable[[int, dict], None] | None = None,
                key: str | None = None, ranks: Ranks | None = None) -> TrainResult:
    """Train from scratch, or resume from ``checkpoint`` when it was written by the same run (same
    :func:`fingerprint`, passed as ``key`` when the caller has it); returns the best model by validation Dice.

    Each split is a :class:`SliceSet` (in memory) or a :class:`ShardedSplit` (read from its shards as
    needed). In a distributed run (``ranks``) every process calls this; rank 0 alone validates, writes the
    checkpoint and calls ``on_epoch``, and only its result holds the best weights and the history.
    """
    ranks = ranks or Ranks()
    regions = TARGET_REGIONS[params.target]
    _check_tumour(train_set, "train")
    _check_tumour(val_set, "val")
    device = pick_device(params.device)
    key = key or fingerprint(params, train_set, val_set, seed, device.type)
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    torch.manual_seed(seed)
    config = UNetConfig(in_channels=slice_channels, out_channels=len(regions), base=params.base,
                        depth=params.depth, norm=params.norm)
    fmt = torch.channels_last if params.channels_last else torch.contiguous_format
    model = UNet(config).to(device, memory_format=fmt)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr, fused=device.type == "cuda")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    state = {"epoch": 0, "history": [], "best": {"dice": -1.0, "epoch": 0, "weights": None}}
    saved = load_checkpoint(checkpoint) if params.resume else None
    if saved is not None and saved.get("fingerprint") == key:
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        restore_rng(saved["rng"], generator)
        state = {k: saved[k] for k in ("epoch", "history", "best")}
        log.info("resuming from the checkpoint after epoch %d of %d", state["epoch"], params.epochs)
    step = make_step(_parallel(model, params, device, ranks), optimiser, params, device, ranks)
    _check_sizes(params, train_set, device, ranks)
    train_data = DeviceData(train_set, regions, device) if isinstance(train_set, SliceSet) else \
        StreamData(train_set, regions, device)
    for epoch in range(state["epoch"], params.epochs):
        if params.schedule != "constant":  # constant: the optimiser as built (the seed's training, byte for byte)
            for group in optimiser.param_groups:
                group["lr"] = lr_at(params, epoch)
        train_loss = _train_epoch(step, train_data, params, generator, epoch, ranks)
        if ranks.main:
            metrics = {"train_loss": train_loss, **validate(model, val_set, regions, params.bce_weight, params.amp)}
            state["history"].append({"epoch": epoch + 1, **metrics})
            if metrics["val_dice"] > state["best"]["dice"]:
                weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                state["best"] = {"dice": metrics["val_dice"], "epoch": epoch + 1, "weights": weights}
            state["epoch"] = epoch + 1
            save_checkpoint(checkpoint, {**state, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                         "rng": rng_state(generator), "fingerprint": key})
            log.info("epoch %d/%d: %s", epoch + 1, params.epochs,
                     json.dumps({k: round(v, 4) for k, v in metrics.items()}))
            if on_epoch:
                on_epoch(epoch + 1, metrics)
        ranks.barrier()  # the others wait while rank 0 validates and writes the checkpoint
    best = UNet(config)  # a plain U-Net whatever the training ran (SyncBatchNorm, DDP), on the CPU, contiguous
    best.load_state_dict(state["best"]["weights"] if state["best"]["weights"] is not None else model.state_dict())
    return TrainResult(best.eval(), regions, state["history"], state["best"]["epoch"], str(device))


def _parallel(model: UNet, params: TrainParams, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """The module the training step runs: ``model`` itself, or wrapped in DistributedDataParallel (batch norm
    synchronised over processes on GPUs, so that its statistics are the global batch's)."""
    if ranks.world == 1:
        return model
    if params.norm == "batch":
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif ranks.main:
            log.warning("batch norm statistics are per process on CPUs (torch synchronises them on GPUs only); "
                        "train.norm: instance or group trains exactly as a single process would")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[ranks.local_rank] if device.type == "cuda"
                                                     else None)


def _check_sizes(params: TrainParams, train_set: Split, device: torch.device, ranks: Ranks) -> None:
    """Before any work: refuse a network and batch that cannot fit the GPU's memory (the host's was checked when
    params.yaml was loaded), and say so when the batch is larger than the training set."""
    if device.type == "cuda":
        check_training_memory(params.base, params.depth, train_set.shape[-1], params.batch_size // ranks.world,
                              torch.cuda.get_device_properties(device).total_memory, "the GPU's memory")
    if params.batch_size > len(train_set) and ranks.main:
        log.warning("train.batch_size %d is larger than the training set (%d slices): every epoch is a single step "
                    "on all of them; lower train.batch_size or add cases", params.batch_size, len(train_set))


def _check_tumour(data: Split, split: str) -> None:
    if not data.has_tumour():
        raise DataError(f"the {split} split has no slice with tumour, so nothing can be learnt or measured; "
                        f"add cases with tumours or change slice.split / base.seed.")


class DeviceData:
    """Training images and labels on the device (or pinned host memory when they don't fit)."""

    def __init__(self, data: SliceSet, regions: tuple[str, ...], device: torch.device) -> None:
        self.regions, self.device = regions, device
        images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes + labels.nbytes < 0.5 * free:
                images, labels = images.to(device), labels.to(device)
            else:
                log.info("training set (%.1f GB) kept in pinned host memory", images.nbytes / 1e9)
                images, labels = images.pin_memory(), labels.pin_memory()
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.images.device)
        x = self.images[idx].to(self.device, non_blocking=True).float()
        y = region_targets(self.labels[idx].to(self.device, non_blocking=True), self.regions)
        return x, y

    def batches(self, order: torch.Tensor, starts: list[int], size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches ``order[start:start + size]`` for each start, in turn."""
        for start in starts:
            yield self.batch(order[start:start + size])


class StreamData:
    """Training batches read from the shards as they are needed, one batch ahead in a background thread
    (into pinned memory on CUDA); the same batches as :class:`DeviceData` for the same order."""

    def __init__(self, data: ShardedSplit, regions: tuple[str, ...], device: torch.device) -> None:
        self.data, self.regions, self.device = data, regions, device

    def __len__(self) -> int:
        return len(self.data)

    def _read(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = (torch.from_numpy(a) for a in self.data.take(idx))
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def batches(self, order: torch.Tensor, starts: list[int], size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = order.cpu().numpy()
        with ThreadPoolExecutor(1, thread_name_prefix="brats-seg-batches") as reader:
            ahead = [reader.submit(self._read, order[start:start + size]) for start in starts[:1]]
            for i in range(len(starts)):
                images, labels = ahead.pop().result()
                if i + 1 < len(starts):
                    ahead.append(reader.submit(self._read, order[starts[i + 1]:starts[i + 1] + size]))
                x = images.to(self.device, non_blocking=True).float()
                yield x, region_targets(labels.to(self.device, non_blocking=True), self.regions)


def make_step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, params: TrainParams,
              device: torch.device, ranks: Ranks | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One optimiser step on a batch; returns the loss (of the global batch in a distributed run)."""
    use_amp = params.amp and device.type == "cuda"
    fmt = torch.channels_last if params.channels_last else torch.contiguous_format
    total = ranks.total if ranks is not None and ranks.world > 1 else None

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return segmentation_loss(model(x.contiguous(memory_format=fmt)), y, params.bce_weight, total)

    compiled = torch.compile(forward_loss) if params.compile else forward_loss

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = compiled(x, y)
        loss.backward()
        optimiser.step()
        return loss.detach()

    return step


def _train_epoch(step: Callable, data: DeviceData | StreamData, params: TrainParams, generator: torch.Generator,
                 epoch: int, ranks: Ranks) -> float:
    """One epoch: a permutation of the set, cut into global batches (the last partial one dropped: static
    shapes for torch.compile); this process trains on its part of each. Returns the mean loss."""
    local = min(params.batch_size, len(data)) // ranks.world
    if local < 1:
        raise UserError(f"the training set has {len(data)} slices, fewer than train.nproc ({ranks.world}); "
                        f"lower train.nproc or add cases.")
    batch = local * ranks.world
    n_steps = len(data) // batch
    order = torch.randperm(len(data), generator=generator, device=generator.device)
    starts = [s * batch + ranks.rank * local for s in range(n_steps)]
    total = torch.zeros((), device=generator.device)
    with progress(total=n_steps, desc=f"train epoch {epoch + 1}/{params.epochs}", unit="batch",
                  disable=not ranks.main) as bar:
        for s, (x, y) in enumerate(data.batches(order, starts, local)):
            if params.augment:
                x, y = augment_batch(x, y, generator, of=batch, at=ranks.rank * local)
            loss = step(x, y)
            total += loss
            if s % 25 == 0:  # the running loss for the bar: one host synchronisation every 25 steps
                bar.set_postfix(loss=f"{float(total) / (s + 1):.4f}", refresh=False)
            bar.update()
    return float(ranks.mean(total) / n_steps)


def validate(model: UNet, data: Split, regions: tuple[str, ...], bce_weight: float = 0.0,
             amp: bool = True, chunk: int = 256) -> dict[str, float]:
    """Validation loss (the training loss's terms, over the whole set) and Dice in slice space, computed
    ``chunk`` slices at a time (the set need not fit in memory).

    ``val_dice``: Dice per case and region (a case with neither reference nor prediction scores 1), averaged
    over cases, then over regions; ``val_dice_pooled``: counts pooled over all slices, averaged over regions.
    """
    device = next(model.parameters()).device
    _, case_of = np.unique(data.case_ids, return_inverse=True)
    shape = (int(case_of.max()) + 1, len(regions))
    tp, ps, ts = (torch.zeros(shape, device=device) for _ in range(3))
    inter, denom = torch.zeros(len(regions), device=device), torch.zeros(len(regions), device=device)
    bce = torch.zeros((), device=device)
    for start, (images, labels) in zip(range(0, len(data), chunk), data.chunks(chunk)):
        logits = predict_slices(model, images, amp=amp, sigmoid=False).float()
        target = region_targets(torch.from_numpy(labels).to(device), regions)
        prob = torch.sigmoid(logits)
        inter += (prob * target).sum((0, 2, 3))
        denom += prob.sum((0, 2, 3)) + target.sum((0, 2, 3))
        if bce_weight > 0:
            bce += torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        cases = torch.from_numpy(case_of[start:start + len(labels)]).to(device)
        pred, truth = logits > 0, target > 0
        for counts, mask in ((tp, pred & truth), (ps, pred), (ts, truth)):  # voxel counts per case and region
            counts.index_add_(0, cases, mask.float().sum((2, 3)))
    loss = dice_loss_from_sums(inter, denom)  # the training loss's soft Dice, over the whole set
    if bce_weight > 0:
        loss = loss + bce_weight * bce / (len(data) * len(regions) * int(np.prod(data.shape[2:])))
    dice = torch.where(ps + ts > 0, 2 * tp / (ps + ts).clamp(min=1), torch.ones_like(tp))
    pooled = 2 * tp.sum(0) / (ps.sum(0) + ts.sum(0)).clamp(min=1)
    return {"val_loss": float(loss), "val_dice": float(dice.mean(0).mean()), "val_dice_pooled": float(pooled.mean())}
