"""Training losses on logits ``[N, R, H, W]`` and binary targets of the same shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, computed over the whole batch per channel, then averaged over channels."""
    prob = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.0) -> torch.Tensor:
    """Soft Dice plus ``bce_weight`` times binary cross-entropy."""
    loss = soft_dice_loss(logits, target)
    if bce_weight > 0:
        loss = loss + bce_weight * F.binary_cross_entropy_with_logits(logits.float(), target)
    return loss
