"""The overlays' geometry: the radiological view with the patient's directions marked, whatever the grid's
storage order, and three distinct slices through each tumour."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brats_seg.data.synthetic import lps_affine
from brats_seg.reporting.overlays import axial_view, pick_slices

SHAPE = (6, 8, 5)
AFFINES = {
    "LPS (BraTS)": lps_affine(SHAPE),
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "axes swapped: A, R, S": np.array([[0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]),
    "axes swapped: P, L, S": np.array([[0, -1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]),
}


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World (RAS+) coordinates of every voxel, ``shape + (3,)``."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return index @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_the_view_puts_the_patients_right_on_the_left_and_anterior_at_the_top(name):
    affine = AFFINES[name]
    shape = SHAPE if name == "LPS (BraTS)" or name == "RAS" else (8, 6, 5)
    world = _world(affine, shape)
    show, marks = axial_view(nib.aff2axcodes(affine))
    assert marks == ("R", "L", "A", "P")
    image = show(world[:, :, 0, 0])  # each pixel's world x: +x is the patient's right (RAS+)
    assert (np.diff(image, axis=1) < 0).all()  # rightmost in the patient at the image's left edge
    image = show(world[:, :, 0, 1])  # world y: +y is anterior
    assert (np.diff(image, axis=0) < 0).all()  # anterior at the top


def test_a_plane_that_is_not_axial_is_shown_as_stored_with_its_directions():
    coronal = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # axes point to A, S, R
    show, marks = axial_view(nib.aff2axcodes(coronal))
    assert marks == ("P", "A", "S", "I")  # stored X runs left to right, stored Y bottom to top
    world = _world(coronal, (5, 4, 3))
    assert (np.diff(show(world[:, :, 0, 1]), axis=1) > 0).all()  # anterior (world +y) at the right edge
    assert (np.diff(show(world[:, :, 0, 2]), axis=0) < 0).all()  # superior (world +z) at the top


def test_three_distinct_slices_at_the_tumours_quartiles():
    ref = np.zeros((4, 4, 40), bool)
    ref[1, 1, 10:30] = True  # one voxel per slice over 20 slices
    assert pick_slices(ref, ref) == [14, 19, 24]


def test_a_one_slice_tumour_still_gives_three_slices_and_an_empty_case_spans_the_volume():
    ref = np.zeros((4, 4, 40), bool)
    ref[1, 1, 7] = True
    assert pick_slices(ref, np.zeros_like(ref)) == [7, 8, 9]
    pred = np.zeros_like(ref)
    pred[2, 2, 30:34] = True
    assert pick_slices(np.zeros_like(ref), pred) == [30, 31, 32]  # the prediction's, where the reference has none
    assert pick_slices(np.zeros_like(ref), np.zeros_like(ref)) == [9, 19, 29]
