"""Training losses on logits ``[N, R, H, W]`` and binary targets of the same shape."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Sums = Callable[[torch.Tensor], torch.Tensor]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
                   total: Sums | None = None) -> torch.Tensor:
    """1 - soft Dice, computed over the whole batch per channel, then averaged over channels.

    ``total`` turns this process's per-channel sums into the global batch's (a differentiable all-reduce in a
    distributed run), so that every process computes the Dice of the global batch, as one process would.
    """
    prob = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    if total is not None:
        inter, denom = total(inter), total(denom)
    return dice_loss_from_sums(inter, denom, eps)


def dice_loss_from_sums(inter: torch.Tensor, denom: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice from per-channel sums of ``prob * target`` and of ``prob + target``, averaged over channels
    (so a set too large for one batch can be scored by adding up the sums of its parts)."""
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.0,
                      total: Sums | None = None) -> torch.Tensor:
    """Soft Dice plus ``bce_weight`` times binary cross-entropy (a mean over this process's batch: averaging
    gradients over processes makes it the global batch's)."""
    loss = soft_dice_loss(logits, target, total=total)
    if bce_weight > 0:
        loss = loss + bce_weight * F.binary_cross_entropy_with_logits(logits.float(), target)
    return loss
