from __future__ import annotations

import torch

from brats_seg.training.augment import augment_batch


def test_geometry_moves_images_and_targets_together_and_background_stays_zero():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(64, 2, 8, 8)
    images[:, :, 1:6, 2:4] = torch.rand(64, 2, 5, 2) + 1.0  # brain with positive values
    images[:, :, 1, 2] = 10.0  # a marker at an asymmetric position
    targets = (images[:, :1] == 10.0).float()
    out_img, out_tgt = augment_batch(images, targets, g)
    assert torch.equal(out_tgt, (out_img[:, :1] > 8.0).float())  # the marker and its target stay together
    brain_in, brain_out = (images != 0).sum(), (out_img != 0).sum()
    assert brain_in == brain_out  # intensity changes never touch the background
    positions = {tuple(torch.nonzero(t[0])[0].tolist()) for t in out_tgt}
    assert len(positions) == 8  # all eight symmetries of the square occur


def test_same_generator_state_same_augmentation():
    images, targets = torch.rand(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)
    a = augment_batch(images, targets, torch.Generator().manual_seed(3))
    b = augment_batch(images, targets, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_modalitys_context_slices_change_intensity_together():
    """slice.context 1: channels 0-2 are one modality's slices z-1, z, z+1 and take one gain and offset; a second
    modality (channels 3-5) takes its own. Without groups every channel draws its own."""
    images = torch.rand(16, 1, 8, 8).add(1.0).repeat(1, 6, 1, 1)  # six equal channels
    targets = torch.zeros(16, 1, 8, 8)
    grouped, _ = augment_batch(images, targets, torch.Generator().manual_seed(1), group=3)
    assert torch.equal(grouped[:, 0], grouped[:, 1]) and torch.equal(grouped[:, 1], grouped[:, 2])
    assert torch.equal(grouped[:, 3], grouped[:, 5]) and not torch.equal(grouped[:, 0], grouped[:, 3])
    alone, _ = augment_batch(images, targets, torch.Generator().manual_seed(1))
    assert not torch.equal(alone[:, 0], alone[:, 1])
