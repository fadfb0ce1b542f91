"""Per-patient evaluation in the original grid: exact round trips, the empty-mask rules, the overlays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brats_seg.data.labels import region_mask
from brats_seg.data.preprocess import preprocess_case, restore_volume
from brats_seg.data.synthetic import MODALITIES, make_case
from brats_seg.evaluation.evaluate import score_case, summarise_cases
from brats_seg.evaluation.metrics import HD95_ONE_EMPTY_MM

REGIONS = ("wt", "tc", "et")


@pytest.fixture(scope="module")
def case():
    return make_case(3, seed=5, shape=(64, 64, 32))


def test_the_reference_as_prediction_scores_exactly_one_and_zero_mm(case):
    rows = score_case("c", {r: region_mask(case.seg, r) for r in REGIONS}, case.seg, (1.0, 1.0, 1.0))
    assert [r["region"] for r in rows] == list(REGIONS)
    for row in rows:
        assert row["ref_voxels"] > 0 and row["empty_rule"] == ""
        assert (row["dice"], row["iou"], row["precision"], row["recall"], row["hd95"]) == (1.0, 1.0, 1.0, 1.0, 0.0)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1, 0, 2), (2, 0, 1), (1, 2, 0)])
def test_slices_restored_at_identity_scale_reproduce_the_reference_exactly(case, axes):
    """Through the evaluate path (preprocess -> slice labels as probabilities -> restore -> score), on volumes
    stored with permuted axes: every voxel comes back, so Dice is exactly 1 and HD95 exactly 0 mm."""
    images = np.stack([case.images[m] for m in MODALITIES]).transpose(0, *(a + 1 for a in axes))
    seg = case.seg.transpose(axes)
    affine = case.affine.copy()
    affine[:3, :3] = case.affine[:3, :3][:, list(axes)]
    side = preprocess_case(images, affine, size=32, margin=2).geometry.side
    pre = preprocess_case(images, affine, size=side, margin=2, seg=seg)  # no resampling
    predicted = {r: restore_volume(region_mask(pre.labels, r).astype(np.float32), pre.z, pre.geometry) > 0.5
                 for r in REGIONS}
    assert predicted["wt"].shape == seg.shape
    for row in score_case("c", predicted, seg, (1.0, 1.0, 1.0)):
        assert row["dice"] == 1.0 and row["hd95"] == 0.0, row["region"]
    # the same anatomy whatever the storage order: identical slices
    straight = preprocess_case(np.stack([case.images[m] for m in MODALITIES]), case.affine, size=side, margin=2)
    assert np.array_equal(pre.images, straight.images)


def test_a_one_voxel_shift_is_not_exact(case):
    """What the exact tests above would miss with a 'Dice > 0.95' bound."""
    shifted = np.roll(region_mask(case.seg, "wt"), 1, axis=0)
    (row,) = score_case("c", {"wt": shifted}, case.seg, (1.0, 1.0, 1.0))
    assert 0.8 < row["dice"] < 1.0 and row["hd95"] >= 1.0


def test_summary_counts_the_empty_mask_rules_and_keeps_missed_tumours_in_the_mean():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[3:6, 3:6, 3:6] = 2
    empty = np.zeros_like(seg)
    rows = (score_case("hit", {"wt": seg > 0}, seg, (1.0, 1.0, 1.0))
            + score_case("missed", {"wt": empty > 0}, seg, (1.0, 1.0, 1.0))
            + score_case("healthy", {"wt": empty > 0}, empty, (1.0, 1.0, 1.0)))
    summary = summarise_cases(pd.DataFrame(rows), {"wt": {"dice_mean": 0.5, "dice_pooled": 0.5}})
    wt = summary["wt"]
    assert summary["n_cases"] == 3
    assert (wt["cases_both_empty"], wt["cases_one_empty"]) == (1, 1)
    assert wt["dice_mean"] == pytest.approx(2 / 3)
    assert wt["hd95_mean"] == pytest.approx(HD95_ONE_EMPTY_MM / 3)
    assert wt["hd95_median"] == 0.0


def test_each_row_holds_the_lesion_wise_scores_of_the_label_map_and_the_summary_their_means(case):
    """A far false-positive lesion: legacy Dice, lesion-wise Dice (every lesion counted: (1 + 0) / 2) and PQ drop, while
    the gli leaderboard column (matched lesions only) stays 1; a region empty in both scores 1 and 0 mm (NaN
    officially, kept so in ``official``)."""
    ref = case.seg.copy()
    ref[ref == 4] = 1  # no enhancing tumour in this patient
    predicted = {r: region_mask(ref, r) for r in REGIONS}
    blob = np.zeros(ref.shape, dtype=bool)
    blob[2:6, 2:6, 2:6] = True  # 64 voxels away from the tumour
    assert not (blob & (ref > 0)).any()
    predicted["wt"] = predicted["wt"] | blob
    rows = {r["region"]: r for r in score_case("c", predicted, ref, (1.0, 1.0, 1.0))}
    wt = rows["wt"]
    assert wt["official"]["tp"] == 1 and wt["official"]["fp"] == 1 and wt["official"]["fn"] == 0
    assert wt["official"]["lesionwise_dsc_mean"] == 1.0 and wt["lesion_dice"] == pytest.approx(0.5)
    assert wt["lesion_pq"] == pytest.approx(1.0 * 1 / (1 + 0.5)) and wt["dice"] < 1.0
    assert wt["lesion_hd95"] == pytest.approx((0.0 + 373.0) / 2)  # the false lesion scores the 373 mm penalty
    et = rows["et"]
    assert np.isnan(et["official"]["lesionwise_dsc_mean"]) and (et["lesion_dice"], et["lesion_hd95"]) == (1.0, 0.0)
    summary = summarise_cases(pd.DataFrame(list(rows.values())), {r: {"dice_mean": 1.0, "dice_pooled": 1.0}
                                                                   for r in REGIONS})
    assert summary["wt"]["lesion_dice_mean"] == 0.5 and summary["wt"]["lesion_pq_mean"] == pytest.approx(2 / 3)
    assert "lesion_hd95_median" in summary["wt"] and "lesion_dice_median" not in summary["wt"]


def test_where_the_errors_come_from_lesion_counts_and_far_false_positives(case):
    """Each case and region says how many lesions were predicted and are in the reference (the official
    package's instances) and how much was predicted more than 10 mm outside the reference's bounding box."""
    wt = region_mask(case.seg, "wt")
    near, far = np.zeros_like(wt), np.zeros_like(wt)
    idx = np.argwhere(wt)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    x = min(hi[0] + 5, wt.shape[0] - 1)  # 5 voxels beyond the box: at the tumour's border
    near[x, lo[1], lo[2]] = True
    far_corner = tuple(0 if lo[a] > 12 else wt.shape[a] - 1 for a in range(3))  # >= 12 voxels away on some axis
    assert any(abs(far_corner[a] - (lo[a] if far_corner[a] == 0 else hi[a])) > 10 for a in range(3))
    far[far_corner] = True
    (exact,) = score_case("c", {"wt": wt}, case.seg, (1.0, 1.0, 1.0))
    (row,) = score_case("c", {"wt": wt | near | far}, case.seg, (1.0, 1.0, 1.0))
    assert exact["far_fp_ml"] == 0.0 and exact["pred_lesions"] == exact["ref_lesions"] == 1
    assert row["far_fp_ml"] == pytest.approx(0.001) and row["pred_lesions"] == 3 and row["ref_lesions"] == 1
    (coarse,) = score_case("c", {"wt": wt | near | far}, case.seg, (1.0, 1.0, 4.0))  # 4 mm: 3 voxels of margin
    assert coarse["far_fp_ml"] >= 0.004 - 1e-12


def test_the_summary_gives_each_patients_lesion_wise_dice_beside_its_dice(case, tmp_path, monkeypatch):
    """`brats-seg summary`: the lesion-wise Dice (the promotion's metric) per patient and per region, as evaluate
    wrote them."""
    from brats_seg.base_params import BaseParams
    from brats_seg.cli import _eval_lines
    from brats_seg.io.tables import write_json

    shifted = {r: np.roll(region_mask(case.seg, r), 2, axis=0) for r in REGIONS}
    frame = pd.DataFrame(score_case("p1", shifted, case.seg, (1.0, 1.0, 1.0)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    frame.drop(columns="official").to_csv("reports/eval_cases.csv", index=False)
    slice_level = {r: {"dice_mean": 0.5, "dice_pooled": 0.5} for r in REGIONS}
    write_json("reports/eval.json", summarise_cases(frame, slice_level))
    lines = _eval_lines(BaseParams())
    wt = frame.set_index("region").loc["wt"]
    assert any(f"p1{' ' * 26} WT Dice {wt['dice']:.3f} / lesion-wise {wt['lesion_dice']:.3f}  HD95" in line
               for line in lines), lines
    assert any(f"WT Dice mean {wt['dice']:.3f}, median {wt['dice']:.3f}; lesion-wise Dice mean "
               f"{wt['lesion_dice']:.3f} (slice-level" in line for line in lines), lines  # which median: Dice's
