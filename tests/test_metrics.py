from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from brats_seg.evaluation.metrics import bounding_box, case_metrics, hd95, scores_from_counts, summarise, surface

# (tp, fp, fn) -> expected dice, iou, precision, recall, computed by hand. docs/design.md's empty-case rules:
# both empty -> all 1; recall with an empty reference = 1 if the prediction is empty else 0; precision with
# no predicted voxels = 1 if the reference is empty else 0.
TABLE = [
    ((0, 0, 0), (1.0, 1.0, 1.0, 1.0)),          # both empty
    ((0, 5, 0), (0.0, 0.0, 0.0, 0.0)),          # reference empty, prediction not
    ((0, 0, 5), (0.0, 0.0, 0.0, 0.0)),          # prediction empty, reference not
    ((3, 1, 2), (6 / 9, 3 / 6, 3 / 4, 3 / 5)),
    ((10, 0, 0), (1.0, 1.0, 1.0, 1.0)),
    ((1, 3, 0), (2 / 5, 1 / 4, 1 / 4, 1.0)),
]


@pytest.mark.parametrize(("counts", "expected"), TABLE)
def test_scores_match_the_hand_computed_table(counts, expected):
    got = scores_from_counts(*counts)
    assert [got[k] for k in ("dice", "iou", "precision", "recall")] == pytest.approx(list(expected))


def test_agreement_with_scikit_learn_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ref = rng.random((12, 12, 6)) < rng.uniform(0.05, 0.5)
        pred = rng.random((12, 12, 6)) < rng.uniform(0.05, 0.5)
        got = case_metrics(pred, ref)
        r, p = ref.ravel(), pred.ravel()
        assert got["dice"] == pytest.approx(f1_score(r, p), abs=1e-6)
        assert got["iou"] == pytest.approx(jaccard_score(r, p), abs=1e-6)
        assert got["precision"] == pytest.approx(precision_score(r, p), abs=1e-6)
        assert got["recall"] == pytest.approx(recall_score(r, p), abs=1e-6)


def test_surface_is_mask_minus_six_connected_erosion():
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    shell = surface(cube)
    assert shell.sum() == 5**3 - 3**3 and not shell[3, 3, 3] and shell[1, 1, 1]


def test_hd95_on_shapes_with_known_distances():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5, 5, 5], b[5, 5, 12] = True, True
    assert hd95(a, b) == pytest.approx(7.0)
    assert hd95(a, b, spacing=(1.0, 1.0, 2.5)) == pytest.approx(17.5)
    # two parallel slabs 3 voxels apart: every surface voxel of one is 3 voxels from the other's surface
    a, b = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
    a[:, :, 10], b[:, :, 13] = True, True
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, a) == 0.0


def test_hd95_follows_the_brats_rule_for_empty_masks():
    a = np.zeros((5, 5, 5), bool)
    b = a.copy()
    b[2, 2, 2] = True
    assert hd95(a, a) == 0.0  # both empty
    assert hd95(a, b) == hd95(b, a) == pytest.approx(373.13, abs=0.005)  # exactly one empty: the grid diagonal
    assert math.sqrt(240**2 + 240**2 + 155**2) == pytest.approx(373.1287, abs=1e-4)


def test_a_missed_tumour_raises_the_mean_hd95_instead_of_vanishing_from_it():
    ref = np.zeros((20, 20, 20), bool)
    ref[5:9, 5:9, 5:9] = True
    close = np.roll(ref, 1, axis=0)
    found = [case_metrics(close, ref)["hd95"], case_metrics(close, ref)["hd95"]]
    with_miss = [*found, case_metrics(np.zeros_like(ref), ref)["hd95"]]
    assert summarise(with_miss)["mean"] > summarise(found)["mean"] + 100
    assert summarise(with_miss)["n_nan"] == 0


def _reference_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Brute force: pooled nearest-neighbour distances between surface voxel centres (a KD-tree)."""
    structure = ndimage.generate_binary_structure(3, 1)
    sa = np.argwhere(a & ~ndimage.binary_erosion(a, structure)) * spacing
    sb = np.argwhere(b & ~ndimage.binary_erosion(b, structure)) * spacing
    d_ab, _ = cKDTree(sb).query(sa)
    d_ba, _ = cKDTree(sa).query(sb)
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def test_hd95_agrees_with_a_brute_force_reference_on_random_blobs():
    rng = np.random.default_rng(1)
    for spacing in ((1.0, 1.0, 1.0), (0.8, 0.8, 2.0)):
        for _ in range(5):
            a = ndimage.binary_dilation(rng.random((24, 24, 16)) < 0.01, iterations=2)
            b = ndimage.binary_dilation(rng.random((24, 24, 16)) < 0.01, iterations=2)
            assert hd95(a, b, spacing) == pytest.approx(_reference_hd95(a, b, spacing), abs=1e-6)


def test_summary_ignores_and_counts_nan():
    s = summarise([1.0, math.nan, 3.0])
    assert s == {"mean": 2.0, "median": 2.0, "std": 1.0, "n_nan": 1}


def test_far_false_positives_count_outside_the_widened_box_by_hand():
    from brats_seg.evaluation.metrics import far_false_positives

    ref = np.zeros((40, 40, 40), bool)
    ref[15:20, 15:20, 15:20] = True
    pred = ref.copy()
    pred[29, 17, 17] = True  # 10 voxels beyond the box at 1 mm: inside the 10 mm margin
    pred[30, 17, 17] = True  # 11 voxels: outside
    pred[0:3, 0, 0] = True  # a far corner: 3 voxels
    assert far_false_positives(pred, ref, (1.0, 1.0, 1.0)) == 4
    assert far_false_positives(pred, ref, (2.0, 1.0, 1.0)) == 5  # 2 mm voxels: 5 of margin, both are out
    assert far_false_positives(pred, ref, (2.0, 1.0, 1.0), margin_mm=22.0) == 3  # 11 voxels of margin: both in
    assert far_false_positives(pred, np.zeros_like(ref), (1.0, 1.0, 1.0)) == int(pred.sum())
    assert far_false_positives(ref, ref) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bounding_box_is_find_objects_box_padded_and_none_when_empty(seed):
    """Against scipy's find_objects of the mask as one label: the same box, widened by pad and cut at 0."""
    mask = np.zeros((20, 16, 12), dtype=bool)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        x, y, z = rng.integers(0, (18, 14, 10))
        mask[x:x + 2, y:y + 3, z:z + 2] = True
    (box,) = ndimage.find_objects(mask.astype(np.uint8))
    assert bounding_box(mask, 2) == tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
    assert bounding_box(np.zeros_like(mask), 2) is None
