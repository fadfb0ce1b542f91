"""Training the U-Net: soft Dice (+ optional BCE), Adam, per-epoch validation and resumable checkpoints.

A training set within the memory budget lives in device memory when it fits (else pinned host memory); a
larger one stays in its shards and each batch is read by a background thread while the previous one trains
(:class:`StreamData`), with the same sampling, so the same seed gives the same model either way. Batches are
drawn and augmented on the device; losses are accumulated on the device and read once per epoch. A
checkpoint with model, optimiser and RNG states is written atomically after every epoch; with ``resume`` an
interrupted run continues from it and ends where an uninterrupted run would. The best weights by validation
Dice (per case, in slice space) are the result.

With several processes (``train.nproc``, see :mod:`brats_seg.training.distributed`) every process draws the same
permutation of each epoch and trains on its own part of every global batch; Dice sums and gradients are
added up over processes, so a step is the global batch's step. Rank 0 alone validates and writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from brats_seg.config import check_training_memory, check_unet_fits, result_keys
from brats_seg.data.dataset import ShardedSplit, SliceSet
from brats_seg.errors import DataError, UserError
from brats_seg.inference.bundle import pick_device, predict_slices
from brats_seg.io.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from brats_seg.models.config import ModelConfig
from brats_seg.models.factory import build
from brats_seg.orchestration.provenance import code_digest, code_manifest
from brats_seg.progress import progress
from brats_seg.training.augment import augment_batch
from brats_seg.training.distributed import Ranks
from brats_seg.training.feed import DeviceData, StreamData, region_targets
from brats_seg.training.losses import dice_loss_from_sums, segmentation_loss
from brats_seg.training.params import TARGET_REGIONS, TrainParams, lr_at
from brats_seg.training.selection import METRIC, LesionSelection, lesion_dice

log = logging.getLogger(__name__)

# The code that shapes a trained model: this module's import closure inside the project.
TRAINING_CODE = ("brats_seg.training.loop",)


@dataclasses.dataclass
class TrainResult:
    model: torch.nn.Module
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
                key: str | None = None, ranks: Ranks | None = None, channel_group: int = 1,
                lesions: LesionSelection | None = None) -> TrainResult:
    """Train from scratch, or resume from ``checkpoint`` when it was written by the same run (same
    :func:`fingerprint`, passed as ``key`` when the caller has it); returns the best model by validation Dice.

    Each split is a :class:`SliceSet` (in memory) or a :class:`ShardedSplit` (read from its shards as
    needed). In a distributed run (``ranks``) every process calls this; rank 0 alone validates, writes the
    checkpoint and calls ``on_epoch``, and only its result holds the best weights and the history.
    ``channel_group``: input channels per modality (2 * slice.context + 1), which augmentation scales together.
    The best epoch is the one of the highest ``train.select`` metric (``lesions`` scores ``lesion_dice``).
    """
    ranks = ranks or Ranks()
    regions = TARGET_REGIONS[params.target]
    if params.select == "lesion_dice" and lesions is None:
        lesions = LesionSelection()  # evaluate.lesionwise's default configuration, slice pixels as 1 mm
    _check_tumour(train_set, "train")
    _check_tumour(val_set, "val")
    device = pick_device(params.device)
    key = key or fingerprint(params, train_set, val_set, seed, device.type)
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    torch.manual_seed(seed)
    config = ModelConfig(in_channels=slice_channels, out_channels=len(regions), base=params.base,
                        depth=params.depth, norm=params.norm, architecture=params.model)
    fmt = torch.channels_last if params.channels_last else torch.contiguous_format
    model = build(config).to(device, memory_format=fmt)
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
        train_loss = _train_epoch(step, train_data, params, generator, epoch, ranks, channel_group)
        if ranks.main:
            metrics = {"train_loss": train_loss, **validate(model, val_set, regions, params.bce_weight, params.amp,
                                                            lesions=lesions)}
            state["history"].append({"epoch": epoch + 1, **metrics})
            if metrics[METRIC[params.select]] > state["best"]["dice"]:  # the selected metric, Dice or lesion-wise
                weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                state["best"] = {"dice": metrics[METRIC[params.select]], "epoch": epoch + 1, "weights": weights}
            state["epoch"] = epoch + 1
            save_checkpoint(checkpoint, {**state, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                         "rng": rng_state(generator), "fingerprint": key})
            log.info("epoch %d/%d: %s", epoch + 1, params.epochs,
                     json.dumps({k: round(v, 4) for k, v in metrics.items()}))
            if on_epoch:
                on_epoch(epoch + 1, metrics)
        ranks.barrier()  # the others wait while rank 0 validates and writes the checkpoint
    best = build(config)  # a plain network whatever the training ran (SyncBatchNorm, DDP), on the CPU, contiguous
    best.load_state_dict(state["best"]["weights"] if state["best"]["weights"] is not None else model.state_dict())
    return TrainResult(best.eval(), regions, state["history"], state["best"]["epoch"], str(device))


def _parallel(model: torch.nn.Module, params: TrainParams, device: torch.device, ranks: Ranks) -> torch.nn.Module:
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
    """Before any work: refuse slices the network cannot pool ``depth`` times, and a network and batch that cannot
    fit the host's or the GPU's memory (checked when params.yaml was loaded where it wrote both sections' values;
    here on the slices themselves), and say so when the batch is larger than the training set."""
    check_unet_fits(train_set.shape[-1], params.depth, params.base, params.batch_size)
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
                 epoch: int, ranks: Ranks, group: int = 1) -> float:
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
                x, y = augment_batch(x, y, generator, of=batch, at=ranks.rank * local, group=group,
                                     bias=params.bias_field, dropout=params.modality_dropout)
            loss = step(x, y)
            total += loss
            if s % 25 == 0 or total.device.type == "cpu":  # the running loss: a GPU synchronises every 25 steps
                bar.set_postfix(loss=f"{float(total) / (s + 1):.4f}", refresh=False)
            bar.update()
        mean = float(ranks.mean(total) / n_steps)
        bar.set_postfix(loss=f"{mean:.4f}")  # the epoch's mean, not the last 25-step sample, stays on screen
    return mean


def validate(model: torch.nn.Module, data: Split, regions: tuple[str, ...], bce_weight: float = 0.0,
             amp: bool = True, chunk: int = 256, lesions: LesionSelection | None = None) -> dict[str, float]:
    """Validation loss (the training loss's terms, over the whole set) and Dice in slice space, computed
    ``chunk`` slices at a time (the set need not fit in memory).

    ``val_dice``: Dice per case and region (a case with neither reference nor prediction scores 1), averaged
    over cases, then over regions; ``val_dice_pooled``: counts pooled over all slices, averaged over regions;
    with ``lesions``, ``val_lesion_dice``: the lesion-wise Dice per case and region, averaged likewise
    (:func:`brats_seg.training.selection.lesion_dice`; the masks are held on the host, a byte per voxel).
    """
    device = next(model.parameters()).device
    _, case_of = np.unique(data.case_ids, return_inverse=True)
    shape = (int(case_of.max()) + 1, len(regions))
    tp, ps, ts = (torch.zeros(shape, device=device) for _ in range(3))
    inter, denom = torch.zeros(len(regions), device=device), torch.zeros(len(regions), device=device)
    bce = torch.zeros((), device=device)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
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
        if lesions is not None:
            kept.append((pred.cpu().numpy(), labels))
        for counts, mask in ((tp, pred & truth), (ps, pred), (ts, truth)):  # voxel counts per case and region
            counts.index_add_(0, cases, mask.float().sum((2, 3)))
    loss = dice_loss_from_sums(inter, denom)  # the training loss's soft Dice, over the whole set
    if bce_weight > 0:
        loss = loss + bce_weight * bce / (len(data) * len(regions) * int(np.prod(data.shape[2:])))
    dice = torch.where(ps + ts > 0, 2 * tp / (ps + ts).clamp(min=1), torch.ones_like(tp))
    pooled = 2 * tp.sum(0) / (ps.sum(0) + ts.sum(0)).clamp(min=1)
    out = {"val_loss": float(loss), "val_dice": float(dice.mean(0).mean()), "val_dice_pooled": float(pooled.mean())}
    if lesions is not None:
        predicted, labels = (np.concatenate(a) for a in zip(*kept))
        out["val_lesion_dice"] = lesion_dice(predicted, labels, np.asarray(data.case_ids), np.asarray(data.z),
                                             regions, lesions)
    return out
