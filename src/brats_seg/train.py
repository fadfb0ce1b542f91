"""Training the U-Net: soft Dice (+ optional BCE), Adam, per-epoch validation and resumable checkpoints.

The training set lives in device memory when it fits (else pinned host memory); batches are drawn and
augmented on the device; losses are accumulated on the device and read once per epoch. A checkpoint with
model, optimiser and RNG states is written atomically after every epoch; with ``resume`` an interrupted
run continues from it and ends where an uninterrupted run would. The best weights by validation Dice
(per case, in slice space) are the result.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from brats_seg.augment import augment_batch
from brats_seg.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from brats_seg.data.dataset import SliceSet
from brats_seg.data.labels import region_targets
from brats_seg.errors import DataError
from brats_seg.inference import pick_device, predict_slices
from brats_seg.losses import segmentation_loss
from brats_seg.models.unet import UNet, UNetConfig
from brats_seg.progress import progress
from brats_seg.provenance import code_digest, code_manifest

log = logging.getLogger(__name__)

TARGET_REGIONS = {"wt": ("wt",), "regions": ("wt", "tc", "et")}


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """params.yaml ``train`` section."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    bce_weight: float = 0.0
    target: Literal["wt", "regions"] = "wt"
    base: int = 32
    depth: int = 4
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    augment: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    resume: bool = True
    threads: int = 0

    def __post_init__(self) -> None:
        from brats_seg.config import require, require_at_least, require_positive

        for key in ("epochs", "batch_size", "base", "depth"):
            require_at_least(f"train.{key}", getattr(self, key), 1)
        require_positive("train.lr", self.lr)
        require_at_least("train.bce_weight", self.bce_weight, 0)
        require_at_least("train.threads", self.threads, 0)
        require("train.base", self.base, self.norm != "group" or self.base in (1, 2, 4) or self.base % 8 == 0,
                "1, 2, 4 or a multiple of 8 when train.norm is 'group' (GroupNorm splits channels into 8 groups)")


# Settings that do not change the result; a checkpoint written under other values is still resumable.
_RUNTIME_ONLY = ("resume",)
# The code that shapes a trained model: this module's import closure inside the project.
TRAINING_CODE = ("brats_seg.train",)


@dataclasses.dataclass
class TrainResult:
    model: UNet
    regions: tuple[str, ...]
    history: list[dict]
    best_epoch: int
    device: str


def fingerprint(params: TrainParams, train_set: SliceSet, val_set: SliceSet, seed: int, device: str,
                code: str | None = None) -> str:
    """Identifies a training run: every setting that shapes the result (epochs included), the seed, the
    device type, the full content of the train and validation slices, and the training code's digest.

    A checkpoint resumes only under the same fingerprint, so a resume can never hand back weights made
    from other data, other settings or other code.
    """
    settings = {k: v for k, v in dataclasses.asdict(params).items() if k not in _RUNTIME_ONLY}
    code = code or code_digest(code_manifest(TRAINING_CODE))
    h = hashlib.sha256(json.dumps([settings, seed, device, code], sort_keys=True, default=list).encode())
    for data in (train_set, val_set):
        for array in (data.images, data.labels, data.case_ids.astype(str), data.z):
            array = np.ascontiguousarray(array)
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(memoryview(array).cast("B"))
    return h.hexdigest()[:16]


def train_model(params: TrainParams, train_set: SliceSet, val_set: SliceSet, seed: int, checkpoint: Path,
                slice_channels: int, on_epoch: Callable[[int, dict], None] | None = None,
                key: str | None = None) -> TrainResult:
    """Train from scratch, or resume from ``checkpoint`` when it was written by the same run (same
    :func:`fingerprint`, passed as ``key`` when the caller has it); returns the best model by validation Dice."""
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
    step = make_step(model, optimiser, params, device)
    train_data = DeviceData(train_set, regions, device)
    for epoch in range(state["epoch"], params.epochs):
        train_loss = _train_epoch(step, train_data, params, generator, epoch)
        metrics = {"train_loss": train_loss, **validate(model, val_set, regions, params.bce_weight, params.amp)}
        state["history"].append({"epoch": epoch + 1, **metrics})
        if metrics["val_dice"] > state["best"]["dice"]:
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state["best"] = {"dice": metrics["val_dice"], "epoch": epoch + 1, "weights": weights}
        state["epoch"] = epoch + 1
        save_checkpoint(checkpoint, {**state, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                     "rng": rng_state(generator), "fingerprint": key})
        log.info("epoch %d/%d: %s", epoch + 1, params.epochs, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        if on_epoch:
            on_epoch(epoch + 1, metrics)
    best = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    if state["best"]["weights"] is not None:
        best.load_state_dict(state["best"]["weights"])
    return TrainResult(best.eval(), regions, state["history"], state["best"]["epoch"], str(device))


def _check_tumour(data: SliceSet, split: str) -> None:
    if not np.any(data.labels):
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


def make_step(model: UNet, optimiser: torch.optim.Optimizer, params: TrainParams,
               device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    use_amp = params.amp and device.type == "cuda"
    fmt = torch.channels_last if params.channels_last else torch.contiguous_format

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return segmentation_loss(model(x.contiguous(memory_format=fmt)), y, params.bce_weight)

    compiled = torch.compile(forward_loss) if params.compile else forward_loss

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = compiled(x, y)
        loss.backward()
        optimiser.step()
        return loss.detach()

    return step


def _train_epoch(step: Callable, data: DeviceData, params: TrainParams, generator: torch.Generator,
                 epoch: int) -> float:
    batch = min(params.batch_size, len(data))
    n_steps = len(data) // batch  # the last partial batch is dropped: static shapes for torch.compile
    order = torch.randperm(len(data), generator=generator, device=data.device)
    total = torch.zeros((), device=data.device)
    with progress(total=n_steps, desc=f"train epoch {epoch + 1}/{params.epochs}", unit="batch") as bar:
        for s in range(n_steps):
            x, y = data.batch(order[s * batch:(s + 1) * batch])
            if params.augment:
                x, y = augment_batch(x, y, generator)
            loss = step(x, y)
            total += loss
            if s % 25 == 0:  # the running loss for the bar: one host synchronisation every 25 steps
                bar.set_postfix(loss=f"{float(total) / (s + 1):.4f}", refresh=False)
            bar.update()
    return float(total / n_steps)


def validate(model: UNet, data: SliceSet, regions: tuple[str, ...], bce_weight: float = 0.0,
             amp: bool = True) -> dict[str, float]:
    """Validation loss (the training loss's terms, over the whole set) and Dice in slice space.

    ``val_dice``: Dice per case and region (a case with neither reference nor prediction scores 1), averaged
    over cases, then over regions; ``val_dice_pooled``: counts pooled over all slices, averaged over regions.
    """
    device = next(model.parameters()).device
    logits = predict_slices(model, data.images, amp=amp, sigmoid=False)
    target = region_targets(torch.from_numpy(data.labels).to(device), regions)
    loss = float(segmentation_loss(logits.float(), target, bce_weight))
    pred, truth = logits > 0, target > 0
    _, case_idx = np.unique(data.case_ids, return_inverse=True)
    case_idx = torch.from_numpy(case_idx).to(device)
    shape = (int(case_idx.max()) + 1, len(regions))

    def per_case(mask: torch.Tensor) -> torch.Tensor:  # [N, R, H, W] -> [cases, R] voxel counts
        return torch.zeros(shape, device=device).index_add_(0, case_idx, mask.float().sum((2, 3)))

    tp, ps, ts = per_case(pred & truth), per_case(pred), per_case(truth)
    dice = torch.where(ps + ts > 0, 2 * tp / (ps + ts).clamp(min=1), torch.ones_like(tp))
    pooled = 2 * tp.sum(0) / (ps.sum(0) + ts.sum(0)).clamp(min=1)
    return {"val_loss": loss, "val_dice": float(dice.mean(0).mean()), "val_dice_pooled": float(pooled.mean())}
