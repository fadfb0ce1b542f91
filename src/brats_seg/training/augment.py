"""Augmentation on the device, per sample, without host synchronisation.

Flips and 90-degree rotations (the eight symmetries of the square: a random transpose, then random flips
of each axis) apply to images ``[N, C, H, W]`` and targets alike; intensity scale and shift apply to the
images' brain voxels only (background stays exactly 0), with one gain and offset per modality: a 2.5D slice's
neighbours (``group`` consecutive channels, slice.context) are the same modality and change together.

With ``bias > 0`` (train.bias_field) a smooth random field is added to each modality's brain voxels too: an
intensity inhomogeneity of the kind a receive coil leaves in a scan (a FLAIR brighter towards one side of the
head), which a z-score cannot remove. The field is bicubic between ``BIAS_GRID`` x ``BIAS_GRID`` random values in
[-bias, bias] (z-score units) over the slice. On the 12 real patients of benchmarks/real_accuracy.py it lowered
mean WT Dice (README, Accuracy on real patients), so it is off by default.

With ``dropout > 0`` (train.modality_dropout) each modality of each sample is blanked (set to 0, the value of
"not there") with that probability, never all of a sample's: the network cannot lean on one modality alone (on the
real patients, one patient's normal brain is as bright as tumour in FLAIR but not in T2 or T1ce).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BIAS_GRID = 4  # control points per side: a field that varies over a quarter of the head, not within a tumour


def augment_batch(images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator,
                  scale: float = 0.1, shift: float = 0.1, of: int | None = None,
                  at: int = 0, group: int = 1, bias: float = 0.0,
                  dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform a batch; square slices required (H == W).

    With ``of``, the batch is part of a larger one: the random draws are made for ``of`` samples and those of
    samples ``at``, ``at + 1``, ... are used. Each process of a distributed run draws what a single process
    would for the whole global batch, so every rank's generator stays in step and a global batch is
    augmented exactly as in a single process.
    """
    n, c = images.shape[:2]
    dev = images.device
    total = n if of is None else of
    part = slice(at, at + n)
    coins = (torch.rand((total, 3), generator=generator, device=dev) < 0.5)[part]
    draws = (total, c // group, 1, 1)  # one per modality; group 1: one per channel, the draws of before
    gains = 1.0 + scale * (2 * torch.rand(draws, generator=generator, device=dev)[part] - 1)
    offsets = shift * (2 * torch.rand(draws, generator=generator, device=dev)[part] - 1)
    gains, offsets = gains.repeat_interleave(group, dim=1), offsets.repeat_interleave(group, dim=1)
    both = torch.cat([images, targets.to(images.dtype)], dim=1)
    both = torch.where(coins[:, 0, None, None, None], both.transpose(-1, -2), both)
    both = torch.where(coins[:, 1, None, None, None], both.flip(-1), both)
    both = torch.where(coins[:, 2, None, None, None], both.flip(-2), both)
    images, targets = both[:, :c], both[:, c:].to(targets.dtype)
    brain = images != 0
    images = torch.where(brain, images * gains.to(images.dtype) + offsets.to(images.dtype), images)
    if bias > 0:  # drawn after the others: bias 0 leaves every draw, and so every batch, as it was
        images = torch.where(brain, images + bias_field(images, generator, bias, total, part, group), images)
    if dropout > 0:  # drawn last, as the field: 0 leaves every other draw as it was
        images = images * kept_modalities(generator, dropout, total, c // group, dev)[part].repeat_interleave(
            group, dim=1)[..., None, None].to(images.dtype)
    return images, targets


def kept_modalities(generator: torch.Generator, dropout: float, total: int, modalities: int,
                    device: torch.device) -> torch.Tensor:
    """``[total, modalities]`` booleans: each modality kept with probability ``1 - dropout``, and a sample whose
    every modality was drawn out keeps the one of its highest draw (the others' draws are left as they are)."""
    draws = torch.rand((total, modalities), generator=generator, device=device)
    return (draws >= dropout) | (draws == draws.amax(dim=1, keepdim=True))


def bias_field(images: torch.Tensor, generator: torch.Generator, bias: float, total: int, part: slice,
               group: int) -> torch.Tensor:
    """One smooth field per sample and modality, the shape of ``images``: bicubic between random values in
    [-bias, bias] at ``BIAS_GRID`` x ``BIAS_GRID`` points spanning the slice (drawn for ``total`` samples, those
    of ``part`` used, as in :func:`augment_batch`)."""
    c, h, w = images.shape[1:]
    coarse = (total, c // group, BIAS_GRID, BIAS_GRID)
    points = bias * (2 * torch.rand(coarse, generator=generator, device=images.device)[part] - 1)
    field = F.interpolate(points, size=(h, w), mode="bicubic", align_corners=True)
    return field.repeat_interleave(group, dim=1).to(images.dtype)
