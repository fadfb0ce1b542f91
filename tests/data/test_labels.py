from __future__ import annotations

import numpy as np
import pytest

from brats_seg.data.labels import INVALID_LABEL, label_ids, region_mask, region_stack, to_canonical, unexpected_labels


def test_conventions_map_to_brats_2020_labels():
    src = np.array([0, 1, 2, 3])
    assert to_canonical(src, "brats2023").tolist() == [0, 1, 2, 4]
    assert to_canonical(src, "msd").tolist() == [0, 2, 1, 4]  # MSD: 1 oedema, 2 non-enhancing, 3 enhancing
    assert to_canonical(np.array([0, 1, 2, 4]), "brats2020").tolist() == [0, 1, 2, 4]
    assert to_canonical(np.array([0.0, 2.9999, 3.0], dtype=np.float32), "brats2023").tolist() == [0, 4, 4]


@pytest.mark.parametrize(("convention", "values", "expected"), [
    # NaN, negative, fractional and too-large values never pass for background (they used to become 0)
    ("brats2023", [np.nan, -1.0, 0.5, 1.4, 300.0, np.inf], [255, 255, 255, 255, 255, 255]),
    ("msd", [np.nan, -2.0, 2.5], [255, 255, 255]),
    ("brats2020", [np.nan, -1.0, 0.25], [255, 255, 255]),
    # a canonical id the convention does not use would pass for enhancing tumour after remapping
    ("brats2023", [4.0], [255]),
    ("msd", [4.0], [255]),
    # other whole numbers are kept so that validation reports them as they were
    ("brats2023", [7.0], [7]),
    ("brats2020", [3.0], [3]),
])
def test_values_that_are_no_label_stay_visible(convention, values, expected):
    assert to_canonical(np.array(values, dtype=np.float32), convention).tolist() == expected
    assert INVALID_LABEL == 255


def test_integer_volumes_of_any_dtype():
    assert to_canonical(np.array([-1, 0, 3, 256], dtype=np.int16), "brats2023").tolist() == [255, 0, 4, 255]
    assert to_canonical(np.array([True, False]), "brats2020").tolist() == [1, 0]
    assert label_ids(np.array([2.0005, 1.99, -0.0], dtype=np.float64)).tolist() == [2, 255, 0]


@pytest.mark.parametrize(("values", "allowed", "expected"), [
    ([0, 1, 2, 4, 4], {0, 1, 2, 4}, []),
    ([0, 3, 7, 1], {0, 1, 2, 4}, ["3", "7"]),
    ([0.0, 0.5, -1.0, np.nan, 1.0], {0, 1}, ["-1", "0.5", "nan"]),
    ([0.0, 2.0, 1.0], {0, 1}, ["2"]),
    ([True, False], {0, 1}, []),
    ([0, 255], {0, 1, 2, 4}, ["255"]),
])
def test_unexpected_labels_lists_each_offending_value_once(values, allowed, expected):
    assert unexpected_labels(np.array(values), frozenset(allowed)) == expected


def test_regions():
    labels = np.array([0, 1, 2, 4])
    assert region_mask(labels, "wt").tolist() == [False, True, True, True]
    assert region_mask(labels, "tc").tolist() == [False, True, False, True]
    assert region_mask(labels, "et").tolist() == [False, False, False, True]
    assert region_stack(labels[None, :, None]).shape == (1, 3, 4, 1)


@pytest.mark.parametrize("order", ["C", "F"])
def test_region_masks_are_what_np_isin_says_in_either_memory_order(order):
    """The comparisons region_mask ORs give np.isin's answer, on a label map laid out as nibabel reads one (F) or
    as the masks are (C), every canonical label and an unexpected one present."""
    labels = np.asarray(np.random.default_rng(0).choice([0, 1, 2, 3, 4], size=(9, 7, 5)), dtype=np.uint8, order=order)
    for region, ids in (("wt", [1, 2, 4]), ("tc", [1, 4]), ("et", [4])):
        np.testing.assert_array_equal(region_mask(labels, region), np.isin(labels, ids))


def test_region_targets_match_region_masks():
    import torch

    from brats_seg.training.feed import region_targets

    labels = np.random.default_rng(0).choice(np.array([0, 1, 2, 4], np.uint8), size=(3, 5, 7))
    got = region_targets(torch.from_numpy(labels), ("wt", "tc", "et")).numpy()
    assert got.shape == (3, 3, 5, 7) and got.dtype == np.float32
    assert np.array_equal(got, region_stack(labels).astype(np.float32))


@pytest.mark.parametrize(("convention", "ids"), [
    ("brats2020", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3]), ("msd", [0, 2, 1, 3]),
])
def test_labels_regions_labels_is_the_identity_in_every_convention(convention, ids):
    """Canonical 0 / 1 necrotic / 2 oedema / 4 enhancing written in each convention (hand table), and a random
    label volume through its region masks and back by the BraTS rule."""
    from brats_seg.data.labels import from_canonical, regions_to_labels

    canonical = np.array([0, 1, 2, 4], dtype=np.uint8)
    assert from_canonical(canonical, convention).tolist() == ids
    volume = np.random.default_rng(3).choice(canonical, size=(9, 8, 7))
    back = regions_to_labels({r: region_mask(volume, r) for r in ("wt", "tc", "et")})
    assert back.dtype == np.uint8 and np.array_equal(back, volume)
    source = from_canonical(volume, convention)
    assert np.array_equal(to_canonical(source, convention), volume)
    assert np.array_equal(from_canonical(to_canonical(source, convention), convention), source)


def test_the_brats_rule_lets_each_inner_region_overwrite_the_outer():
    from brats_seg.data.labels import regions_to_labels

    wt = np.array([1, 1, 1, 1, 0], bool)
    tc = np.array([0, 1, 1, 0, 0], bool)
    et = np.array([0, 0, 1, 0, 1], bool)  # ET outside WT still says enhancing: the rule overwrites, it does not test
    assert regions_to_labels({"wt": wt, "tc": tc, "et": et}).tolist() == [2, 1, 4, 2, 4]
    assert regions_to_labels({"wt": wt, "tc": tc}).tolist() == [2, 1, 1, 2, 0]
    with pytest.raises(ValueError, match="needs the whole-tumour"):
        regions_to_labels({"tc": tc})
