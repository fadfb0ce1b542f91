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


def _brain_batch(n: int = 16, c: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(n, c, size, size)
    images[:, :, 4:28, 6:26] = torch.rand(n, c, 24, 20) + 1.0  # a brain of positive values on a zero background
    return images, torch.zeros(n, 1, size, size)


def test_a_bias_field_is_a_smooth_field_added_to_the_brain_on_top_of_the_same_augmentation():
    """train.bias_field: the field's draws come after every other, so the geometry, gains and offsets are those of
    bias 0 (the default, today's augmentation draw for draw) and the difference is the field alone: zero on the
    background, smooth (its steps between neighbouring pixels a small part of its range), up to about +-bias, and
    its own per sample and modality."""
    images, targets = _brain_batch()
    plain, _ = augment_batch(images, targets, torch.Generator().manual_seed(5))
    biased, _ = augment_batch(images, targets, torch.Generator().manual_seed(5), bias=1.0)
    field = biased - plain
    assert torch.equal(plain == 0, biased == 0)  # the background stays exactly 0
    inside = field[:, :, 8:24, 8:24]  # brain in every orientation the geometry can give
    assert 0.4 < inside.abs().amax() <= 1.3  # about +-bias (bicubic overshoots its control points a little)
    steps = torch.cat([(inside[..., 1:, :] - inside[..., :-1, :]).flatten(),
                       (inside[..., 1:] - inside[..., :-1]).flatten()]).abs()
    assert steps.max() < 0.25 * (inside.amax() - inside.amin())  # smooth: no step is a large part of its range
    assert not torch.allclose(inside[0, 0], inside[0, 1]) and not torch.allclose(inside[0, 0], inside[1, 0])
    g_plain, g_biased = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    augment_batch(images, targets, g_plain, bias=0.0)
    augment_batch(images, targets, g_biased, bias=1.0)
    assert not torch.equal(g_plain.get_state(), g_biased.get_state())  # bias 0 draws nothing more


def test_a_bias_field_is_shared_by_a_modalitys_context_slices_and_split_across_ranks_as_in_one_process():
    images, targets = _brain_batch(n=8, c=1)
    images = images.repeat(1, 6, 1, 1)  # two modalities of three context slices, all equal
    whole, _ = augment_batch(images, targets, torch.Generator().manual_seed(2), group=3, bias=1.0)
    assert torch.equal(whole[:, 0], whole[:, 1]) and torch.equal(whole[:, 0], whole[:, 2])
    assert torch.equal(whole[:, 3], whole[:, 5]) and not torch.equal(whole[:, 0], whole[:, 3])
    part, _ = augment_batch(images[4:], targets[4:], torch.Generator().manual_seed(2), of=8, at=4, group=3,
                            bias=1.0)
    assert torch.equal(part, whole[4:])  # a rank's half of the global batch gets the field one process would


def test_modality_dropout_blanks_whole_modalities_never_all_and_keeps_the_other_draws():
    """train.modality_dropout: a blanked modality is 0 over the whole slice (context slices together), every sample
    keeps at least one, about the given fraction is blanked, and the geometry and intensities of the kept ones are
    those of dropout 0 (its draws come last)."""
    images, targets = _brain_batch(n=1000, c=1)
    images = images.repeat(1, 12, 1, 1)  # four modalities of three context slices
    plain, plain_t = augment_batch(images, targets, torch.Generator().manual_seed(7), group=3)
    dropped, dropped_t = augment_batch(images, targets, torch.Generator().manual_seed(7), group=3, dropout=0.5)
    assert torch.equal(plain_t, dropped_t)
    blank = (dropped == 0).flatten(2).all(2)  # [N, 12]: a channel that is 0 everywhere
    kept = ~blank
    assert torch.equal(dropped[kept], plain[kept])  # what is kept is exactly the augmentation of before
    modality = blank.view(-1, 4, 3)
    assert torch.equal(modality.all(2), modality.any(2))  # a modality's context slices go together
    assert modality.all(2).sum(1).max() == 3  # never all four
    # each blanked with 0.5, less the one kept back where all four were drawn (1/16): 1.9375 of 4 = 0.484 expected
    assert 0.46 < modality.all(2).float().mean() < 0.51


def test_modality_dropout_on_a_rank_is_what_one_process_does_and_zero_draws_nothing():
    images, targets = _brain_batch(n=8, c=4)
    whole, _ = augment_batch(images, targets, torch.Generator().manual_seed(4), dropout=0.5)
    part, _ = augment_batch(images[4:], targets[4:], torch.Generator().manual_seed(4), of=8, at=4, dropout=0.5)
    assert torch.equal(part, whole[4:])
    g_plain, g_dropped = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    augment_batch(images, targets, g_plain)
    augment_batch(images, targets, g_dropped, dropout=0.0)
    assert torch.equal(g_plain.get_state(), g_dropped.get_state())
