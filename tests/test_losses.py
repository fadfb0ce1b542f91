"""The training losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brats_seg.training.losses import segmentation_loss, soft_dice_loss


def test_soft_dice_loss_matches_the_formula_with_smoothing():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])  # [1, 1, 2, 2]
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    p = torch.sigmoid(logits)
    inter, denom = float((p * target).sum()), float(p.sum() + target.sum())
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - (2 * inter + 1) / (denom + 1), rel=1e-6)


def test_soft_dice_loss_is_near_zero_when_right_and_near_one_when_wrong():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    right, wrong = 40 * target - 20, 20 - 40 * target
    assert float(soft_dice_loss(right, target)) < 0.01
    assert float(soft_dice_loss(wrong, target)) > 0.95


def test_soft_dice_is_averaged_over_channels():
    target = torch.zeros(1, 2, 4, 4)
    target[:, 0] = 1
    logits = torch.full((1, 2, 4, 4), 30.0)  # channel 0 right, channel 1 all false positives
    assert float(soft_dice_loss(logits, target)) == pytest.approx((0 + (1 - 1 / (16 + 1))) / 2, abs=1e-4)


def test_bce_term_is_added_with_its_weight():
    logits, target = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert float(segmentation_loss(logits, target)) == pytest.approx(float(soft_dice_loss(logits, target)))
    assert float(segmentation_loss(logits, target, 0.3)) == pytest.approx(
        float(soft_dice_loss(logits, target)) + 0.3 * float(bce), rel=1e-6)
    assert not math.isnan(float(segmentation_loss(torch.full((1, 1, 2, 2), 1e4), torch.zeros(1, 1, 2, 2), 1.0)))
