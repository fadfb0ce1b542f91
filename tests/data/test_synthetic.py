from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_seg.data.labels import ENHANCING, NECROTIC, OEDEMA, region_mask
from brats_seg.data.synthetic import MODALITIES, make_case, tumour_free_indices


@pytest.fixture(scope="module")
def full_case():
    return make_case(1, seed=11)


def test_full_size_case_has_the_brats_2020_format(full_case):
    assert full_case.seg.shape == (240, 240, 155) and full_case.seg.dtype == np.uint8
    for m in MODALITIES:
        assert full_case.images[m].shape == (240, 240, 155) and full_case.images[m].dtype == np.int16
    assert nib.aff2axcodes(full_case.affine) == ("L", "P", "S")
    assert np.allclose(np.abs(np.diag(full_case.affine)[:3]), 1.0)  # 1 mm
    assert set(np.unique(full_case.seg)) <= {0, 1, 2, 4}


def test_background_is_exactly_zero_and_brain_is_positive(full_case):
    brain = full_case.images["flair"] != 0
    for m in MODALITIES:
        assert np.array_equal(full_case.images[m] != 0, brain), m
        assert full_case.images[m][brain].min() > 0
    assert 0.1 < brain.mean() < 0.35  # real BraTS brains fill about 17% of the box
    assert brain[0, 0, 0] == 0 and brain[120, 120, 77]


def test_tumour_is_nested_and_inside_the_brain(full_case):
    seg = full_case.seg
    assert not np.any(seg[full_case.images["t1"] == 0])
    core = region_mask(seg, "tc")
    # necrosis is surrounded by the enhancing rim, which is surrounded by oedema: dilating a label by one
    # voxel only ever touches itself or the next layer out.
    grown = ndimage.binary_dilation(seg == NECROTIC) & ~(seg == NECROTIC)
    assert set(np.unique(seg[grown])) <= {ENHANCING, OEDEMA}
    grown = ndimage.binary_dilation(core) & ~core
    assert set(np.unique(seg[grown])) <= {OEDEMA, 0}
    assert 10_000 < region_mask(seg, "wt").sum() < 400_000


def test_contrasts_follow_real_mri(full_case):
    img, seg = full_case.images, full_case.seg
    normal = (img["flair"] > 0) & (seg == 0)

    def mean(m: str, mask: np.ndarray) -> float:
        return float(img[m][mask].mean())

    assert mean("flair", seg == OEDEMA) > 1.3 * mean("flair", normal)
    assert mean("t2", seg == OEDEMA) > 1.3 * mean("t2", normal)
    assert mean("t1ce", seg == ENHANCING) > 1.3 * mean("t1ce", normal)
    assert mean("t1ce", seg == ENHANCING) > mean("t1", seg == ENHANCING) * 1.5
    assert mean("t1", seg == NECROTIC) < 0.6 * mean("t1", normal)


def test_images_have_noise_and_texture(full_case):
    wm = full_case.images["t1"][100:140, 100:140, 70:80].astype(float)
    assert wm.std() > 10  # not a flat phantom


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = make_case(2, 5, (48, 48, 24)), make_case(2, 5, (48, 48, 24)), make_case(2, 6, (48, 48, 24))
    assert all(np.array_equal(a.images[m], b.images[m]) for m in MODALITIES)
    assert np.array_equal(a.seg, b.seg)
    assert not np.array_equal(a.images["flair"], c.images["flair"])


def test_tumour_free_cases_have_no_labels_and_are_counted_by_fraction():
    free = tumour_free_indices(20, 0.1, seed=3)
    assert len(free) == 2 and free == tumour_free_indices(20, 0.1, seed=3)
    case = make_case(1, 0, (48, 48, 24), tumour=False)
    assert not case.seg.any() and case.images["flair"].any()
