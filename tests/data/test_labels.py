from __future__ import annotations

import numpy as np

from brats_seg.data.labels import region_mask, region_stack, to_canonical


def test_conventions_map_to_brats_2020_labels():
    src = np.array([0, 1, 2, 3])
    assert to_canonical(src, "brats2023").tolist() == [0, 1, 2, 4]
    assert to_canonical(src, "msd").tolist() == [0, 2, 1, 4]  # MSD: 1 oedema, 2 non-enhancing, 3 enhancing
    assert to_canonical(np.array([0, 1, 2, 4]), "brats2020").tolist() == [0, 1, 2, 4]
    assert to_canonical(np.array([0.0, 2.9999, 3.0], dtype=np.float32), "brats2023").tolist() == [0, 4, 4]


def test_regions():
    labels = np.array([0, 1, 2, 4])
    assert region_mask(labels, "wt").tolist() == [False, True, True, True]
    assert region_mask(labels, "tc").tolist() == [False, True, False, True]
    assert region_mask(labels, "et").tolist() == [False, False, False, True]
    assert region_stack(labels[None, :, None]).shape == (1, 3, 4, 1)


def test_region_targets_match_region_masks():
    import torch

    from brats_seg.data.labels import region_targets

    labels = np.random.default_rng(0).choice(np.array([0, 1, 2, 4], np.uint8), size=(3, 5, 7))
    got = region_targets(torch.from_numpy(labels), ("wt", "tc", "et")).numpy()
    assert got.shape == (3, 3, 5, 7) and got.dtype == np.float32
    assert np.array_equal(got, region_stack(labels).astype(np.float32))
