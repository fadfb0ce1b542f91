"""Post-processing of predicted regions: component removal, ET relabelling, nesting, and the validation choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brats_seg.data.labels import ENHANCING, NECROTIC, OEDEMA, region_mask, regions_to_labels
from brats_seg.errors import UserError
from brats_seg.evaluation.choose_postprocess import Choice, choose
from brats_seg.inference.postprocess import NONE, PostProcess, apply, keep_main

SHAPE = (48, 48, 32)
SIZES = (0, 10, 25, 50, 100, 250, 500, 1000)
ETS = (0, 50, 100, 200, 500, 1000)


def dice(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Legacy Dice: 1 when both are empty, 0 when only one is."""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def ball(centre: tuple[int, int, int], radius: float, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def block(corner: tuple[int, int, int], size: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(c, c + size) for c in corner)] = True
    return out


def labels_from(wt: np.ndarray, tc: np.ndarray, et: np.ndarray | None = None) -> np.ndarray:
    labels = np.zeros(wt.shape, dtype=np.uint8)
    labels[wt], labels[tc] = OEDEMA, NECROTIC
    if et is not None:
        labels[et] = ENHANCING
    return labels


def masks_of(labels: np.ndarray) -> dict[str, np.ndarray]:
    return {r: region_mask(labels, r) for r in ("wt", "tc", "et")}


def nested_by_hand(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"wt": masks["wt"] | masks["tc"] | masks["et"], "tc": masks["tc"] | masks["et"], "et": masks["et"]}


def tumour(et: bool) -> np.ndarray:
    """A 48 x 48 x 32 reference: oedema ball r=10, necrotic core r=6, enhancing r=3 (123 voxels) if ``et``."""
    centre = (24, 24, 16)
    return labels_from(ball(centre, 10), ball(centre, 6), ball(centre, 3) if et else None)


# specks of 2 voxels each, in the oedema (inside WT, outside TC)
SPECKS = block((24, 32, 16), 1) | block((24, 32, 17), 1) | block((32, 24, 16), 1) | block((32, 24, 17), 1)


@pytest.fixture
def et_specks() -> list[tuple]:
    """Three ET-free cases whose prediction has false ET specks; two with ET found exactly (1 mm voxels)."""
    cases = []
    for has_et in (False, False, False, True, True):
        ref = tumour(has_et)
        masks = masks_of(ref)
        if not has_et:
            masks["et"] = SPECKS.copy()
        cases.append((masks, ref, (1.0, 1.0, 1.0)))
    return cases


def test_false_et_specks_are_removed_by_the_smallest_size_that_helps(et_specks):
    choice = choose(et_specks, dice, candidates_mm3=SIZES, et_candidates_mm3=ETS)
    assert isinstance(choice, Choice)
    pp = choice.postprocess
    assert pp.min_component_mm3 == {"wt": 0.0, "tc": 0.0, "et": 10.0}  # 10, 25, 50, 100 tie: the smallest
    assert pp.et_min_mm3 == 0.0  # nothing left to relabel
    assert choice.before["et"] == pytest.approx(2 / 5) and choice.after["et"] == 1.0
    assert choice.tried["et"][250.0] == pytest.approx(3 / 5)  # 250 mm3 also removes the real 123 mm3 ET
    masks, ref, spacing = et_specks[0]
    out = apply(masks, spacing, pp)
    assert not out["et"].any() and not (out["tc"] & SPECKS).any() and out["wt"][SPECKS].all()
    assert all(np.array_equal(out[r], region_mask(ref, r)) for r in ("wt", "tc", "et"))


def test_false_et_specks_become_necrotic_core_on_the_relabel_path(et_specks):
    choice = choose(et_specks, dice, candidates_mm3=(0,), et_candidates_mm3=ETS)
    pp = choice.postprocess
    assert pp.et_min_mm3 == 50.0 and pp.min_component_mm3["et"] == 0.0  # 200 would relabel the real ET too
    assert choice.tried["et_relabel"] == pytest.approx({0.0: 0.4, 50.0: 1.0, 100.0: 1.0, 200.0: 0.6, 500.0: 0.6,
                                                        1000.0: 0.6})
    out = apply(et_specks[0][0], (1.0, 1.0, 1.0), pp)
    assert not out["et"].any() and out["tc"][SPECKS].all() and out["wt"][SPECKS].all()
    labels = regions_to_labels(out)
    assert (labels[SPECKS] == NECROTIC).all()
    real = apply(et_specks[3][0], (1.0, 1.0, 1.0), pp)
    assert np.array_equal(real["et"], region_mask(et_specks[3][1], "et"))


def test_small_real_tc_components_keep_tc_at_zero():
    cases = []
    satellites = block((16, 16, 12), 2) | block((30, 16, 20), 2) | block((16, 31, 12), 2)  # 8 voxels each, in WT
    for i in range(4):
        ref = tumour(et=False)
        ref[satellites] = NECROTIC
        masks = masks_of(ref)
        if i == 0:
            masks["tc"] = masks["tc"] | block((31, 31, 19), 1)  # one false 1-voxel TC speck in the oedema
        cases.append((masks, ref, (1.0, 1.0, 1.0)))
    choice = choose(cases, dice, regions=("wt", "tc"), candidates_mm3=SIZES)
    assert choice.postprocess.min_component_mm3 == {"wt": 0.0, "tc": 0.0}
    assert choice.tried["tc"][10.0] < choice.tried["tc"][0.0]  # removing the satellites costs more than the speck
    assert choice.tried["tc"][0.0] < 1.0 and "et" not in choice.after


def test_far_false_positive_wt_blobs_are_removed_and_the_tumour_kept():
    cases = []
    for i, blob in enumerate((4, 5, 4, 5)):  # 64 and 125 mm3 blobs in a corner, far from the tumour
        ref = labels_from(ball((26, 26, 16), 4 if i == 0 else 8), ball((26, 26, 16), 2))
        masks = masks_of(ref)
        masks["wt"] = masks["wt"] | block((1, 1, 1), blob)
        cases.append((masks, ref, (1.0, 1.0, 1.0)))
    assert int(region_mask(cases[0][1]).sum()) == 257  # the small real tumour: kept at 250, lost at 500
    choice = choose(cases, dice, regions=("wt",), candidates_mm3=SIZES)
    assert choice.postprocess.min_component_mm3 == {"wt": 250.0} and choice.postprocess.et_min_mm3 == 0.0
    assert choice.tried["wt"][100.0] < choice.tried["wt"][250.0] > choice.tried["wt"][500.0]
    for masks, ref, spacing in cases:
        out = apply(masks, spacing, choice.postprocess)
        assert list(out) == ["wt", "tc", "et"] and np.array_equal(out["wt"], region_mask(ref))
    assert choice.after["wt"] == 1.0 > choice.before["wt"]


def _blobby_case(rng: np.random.Generator) -> tuple:
    shape = (32, 32, 24)
    ref = labels_from(ball((16, 16, 12), 7, shape), ball((16, 16, 12), 4, shape), ball((16, 16, 12), 2, shape))
    masks = masks_of(ref)
    for region in ("wt", "tc", "et"):
        for _ in range(3):  # false blobs of 1 to 64 voxels, and true blobs the prediction finds
            size, corner = int(rng.integers(1, 5)), tuple(int(c) for c in rng.integers(0, 20, 3))
            masks[region] = masks[region] | block(corner, size, shape)
        true = block(tuple(int(c) for c in rng.integers(0, 20, 3)), int(rng.integers(1, 4)), shape)
        ref[true] = {"wt": OEDEMA, "tc": NECROTIC, "et": ENHANCING}[region]
        masks[region] = masks[region] | true
    return masks, ref, (1.0, 1.2, 1.5)


def test_choose_matches_a_brute_force_greedy_search_over_apply():
    rng = np.random.default_rng(7)
    cases = [_blobby_case(rng) for _ in range(6)]
    choice = choose(cases, dice, candidates_mm3=SIZES, et_candidates_mm3=ETS)

    def mean(pp: PostProcess, region: str) -> float:
        return float(np.mean([dice(apply(m, s, pp)[region], region_mask(ref, region), s) for m, ref, s in cases]))

    chosen: dict[str, float] = {}
    for region in ("et", "tc", "wt"):  # inner first: what ET keeps is in TC and WT too
        means = [mean(PostProcess({**chosen, region: c}), region) for c in SIZES]
        assert choice.tried[region] == pytest.approx(dict(zip(map(float, SIZES), means)))
        chosen[region] = SIZES[int(np.argmax(means))]  # argmax: the first, i.e. smallest, of equal means
    relabel = [mean(PostProcess(chosen, thr), "et") for thr in ETS]
    assert choice.tried["et_relabel"] == pytest.approx(dict(zip(map(float, ETS), relabel)))
    expected = PostProcess(chosen, ETS[int(np.argmax(relabel))])
    assert choice.postprocess == expected and expected != PostProcess({"wt": 0, "tc": 0, "et": 0})
    assert choice.before == pytest.approx({r: mean(NONE, r) for r in ("wt", "tc", "et")})
    assert choice.after == pytest.approx({r: mean(expected, r) for r in ("wt", "tc", "et")})


def test_apply_nests_like_a_label_map_and_never_touches_its_input():
    rng = np.random.default_rng(0)
    masks = {r: rng.random(SHAPE) < p for r, p in (("wt", 0.3), ("tc", 0.2), ("et", 0.1))}
    copies = {r: m.copy() for r, m in masks.items()}
    for pp in (NONE, PostProcess({"wt": 5, "tc": 3, "et": 2}, 40.0), PostProcess({}, 1e9)):
        out = apply(masks, (1.0, 1.0, 1.0), pp)
        assert list(out) == ["wt", "tc", "et"]
        assert not (out["et"] & ~out["tc"]).any() and not (out["tc"] & ~out["wt"]).any()
        labels = regions_to_labels(out)
        assert all(np.array_equal(region_mask(labels, r), out[r]) for r in out)
        assert not any(np.shares_memory(out[r], masks[s]) for r in out for s in masks)
    assert all(np.array_equal(masks[r], copies[r]) for r in masks)
    none = apply(masks, (1.0, 1.0, 1.0), NONE)
    assert all(np.array_equal(none[r], nested_by_hand(masks)[r]) for r in masks)
    relabelled = apply(masks, (1.0, 1.0, 1.0), PostProcess({}, 1e9))  # every ET voxel becomes necrotic core
    assert not relabelled["et"].any() and np.array_equal(relabelled["tc"], masks["tc"] | masks["et"])


def test_a_wt_only_dict_stays_wt_only():
    wt = ball((24, 24, 16), 6) | block((0, 0, 0), 2)
    out = apply({"wt": wt}, (1.0, 1.0, 1.0), PostProcess({"wt": 10, "tc": 10, "et": 10}, 100.0))
    assert list(out) == ["wt"] and np.array_equal(out["wt"], ball((24, 24, 16), 6))
    assert list(apply({"wt": wt}, (1.0, 1.0, 1.0), NONE)) == ["wt"]


def test_a_dict_without_tc_still_nests_et_in_wt():
    wt, et = ball((24, 24, 16), 6), block((40, 40, 20), 3)  # ET outside the predicted WT
    out = apply({"wt": wt, "et": et}, (1.0, 1.0, 1.0), NONE)
    assert list(out) == ["wt", "et"] and np.array_equal(out["wt"], wt | et) and np.array_equal(out["et"], et)
    relabelled = apply({"wt": wt, "et": et}, (1.0, 1.0, 1.0), PostProcess({}, 100.0))  # 27 mm3 < 100 mm3
    assert np.array_equal(relabelled["wt"], wt | et) and not relabelled["et"].any()


def test_component_volume_is_in_mm3_with_the_spacing():
    wt = ball((24, 24, 16), 8) | block((0, 0, 0), 2)  # an 8-voxel blob: 8 mm3 at 1 mm, 1 mm3 at 0.5 mm
    pp = PostProcess({"wt": 4.0})
    assert apply({"wt": wt}, (1.0, 1.0, 1.0), pp)["wt"][0, 0, 0]
    assert not apply({"wt": wt}, (0.5, 0.5, 0.5), pp)["wt"][0, 0, 0]
    assert apply({"wt": wt}, (0.5, 1.0, 2.0), PostProcess({"wt": 8.0}))["wt"][0, 0, 0]  # exactly 8 mm3 is kept


def test_components_are_26_connected():
    diagonal = np.zeros(SHAPE, dtype=bool)
    diagonal[np.arange(8), np.arange(8), np.arange(8)] = True  # 8 voxels touching only at their corners
    out = apply({"wt": diagonal | ball((30, 30, 20), 6)}, (1.0, 1.0, 1.0), PostProcess({"wt": 5.0}))
    assert out["wt"][diagonal].all()  # one 8 mm3 component, not eight 1 mm3 ones


def test_to_dict_from_dict_round_trip_and_describe():
    pp = PostProcess({"et": 10, "wt": 50, "tc": 0}, 200)
    back = PostProcess.from_dict(json.loads(json.dumps(pp.to_dict())))
    assert back == pp and list(back.min_component_mm3) == ["wt", "tc", "et"]
    assert pp.describe() == "WT >= 50 mm3, TC keeps all, ET >= 10 mm3; ET under 200 mm3 -> necrotic core"
    assert PostProcess({}, 50).describe() == "ET under 50 mm3 -> necrotic core"
    assert PostProcess({"wt": 25}).describe() == "WT >= 25 mm3"
    assert NONE.describe() == "no post-processing" and PostProcess.from_dict({}) == NONE


@pytest.mark.parametrize(("d", "named"), [
    ({"min_component_mm3": {"wt": -1}}, "min_component_mm3.wt"),
    ({"min_component_mm3": {"tc": math.nan}}, "min_component_mm3.tc"),
    ({"min_component_mm3": {"wt": True}}, "min_component_mm3.wt"),
    ({"min_component_mm3": {"ncr": 5}}, "'ncr'"),
    ({"min_component_mm3": [5]}, "min_component_mm3"),
    ({"et_min_mm3": math.inf}, "et_min_mm3"),
    ({"et_min_mm3": "10"}, "et_min_mm3"),
    ({"et_min": 10}, "'et_min'"),
    ([("et_min_mm3", 10)], "list"),
    ({"main_fraction": 1.5}, "main_fraction"),
    ({"main_fraction": -0.1}, "main_fraction"),
    ({"main_fraction": True}, "main_fraction"),
])
def test_from_dict_refuses_bad_settings_in_one_sentence(d, named):
    with pytest.raises(UserError) as err:
        PostProcess.from_dict(d)
    message = str(err.value)
    assert named in message and message.endswith(".") and "\n" not in message and message.count(". ") == 0


def test_bad_masks_and_cases_are_refused_with_one_sentence():
    wt, tc = ball((24, 24, 16), 8), ball((24, 24, 16), 4)
    with pytest.raises(ValueError, match="differ in shape"):
        apply({"wt": wt, "tc": tc[:, :, :30]}, (1.0, 1.0, 1.0), NONE)
    with pytest.raises(ValueError, match="unknown region 'ncr'"):
        apply({"wt": wt, "ncr": tc}, (1.0, 1.0, 1.0), NONE)
    with pytest.raises(ValueError, match="not boolean"):
        apply({"wt": wt.astype(np.float32)}, (1.0, 1.0, 1.0), NONE)
    with pytest.raises(ValueError, match="spacing"):
        apply({"wt": wt}, (1.0, 1.0), NONE)
    ref = labels_from(wt, tc)
    with pytest.raises(ValueError, match="reference is"):
        choose([({"wt": wt}, ref[:, :, :30], (1.0, 1.0, 1.0))], dice, regions=("wt",))
    with pytest.raises(ValueError, match="no tc mask"):
        choose([({"wt": wt}, ref, (1.0, 1.0, 1.0))], dice, regions=("wt", "tc"))
    with pytest.raises(UserError, match="candidate"):
        choose([({"wt": wt}, ref, (1.0, 1.0, 1.0))], dice, regions=("wt",), candidates_mm3=(0, -5))
    with pytest.raises(UserError, match="got none"):
        choose([], dice)


def test_with_the_gates_lesion_wise_dice_false_et_specks_are_removed_and_real_tc_parts_kept(et_specks, caplog):
    """The score the train stage maximises (evaluate.lesion_score: the official lesion-wise Dice, an empty region
    where the reference has none scoring 1): ET specks in ET-free cases score 0 until removed, so a size above 0
    is chosen; TC's real satellites and the tumour are left alone. The log line names the score it reports."""
    from brats_seg.evaluation.evaluate import lesion_score

    score = lesion_score("gli")
    with caplog.at_level("INFO", logger="brats_seg.evaluation.choose_postprocess"):
        choice = choose(et_specks, score, candidates_mm3=SIZES, et_candidates_mm3=ETS)
    assert f"(mean lesion-wise Dice WT {choice.before['wt']:.4f} -> {choice.after['wt']:.4f}, TC " in caplog.text
    assert choice.postprocess.min_component_mm3["et"] > 0 or choice.postprocess.et_min_mm3 > 0
    assert choice.before["et"] == pytest.approx(2 / 5) and choice.after["et"] == 1.0
    assert choice.postprocess.min_component_mm3["wt"] == 0.0 and choice.postprocess.min_component_mm3["tc"] == 0.0
    out = apply(et_specks[0][0], (1.0, 1.0, 1.0), choice.postprocess)
    assert not out["et"].any() and out["wt"][SPECKS].all()
    satellites = block((16, 16, 12), 2) | block((30, 16, 20), 2)
    ref = tumour(et=False)
    ref[satellites] = NECROTIC
    masks = masks_of(ref)
    tc_choice = choose([(masks, ref, (1.0, 1.0, 1.0))] * 3, score, regions=("wt", "tc"), candidates_mm3=SIZES)
    assert tc_choice.postprocess.min_component_mm3 == {"wt": 0.0, "tc": 0.0}
    assert np.array_equal(apply(masks, (1.0, 1.0, 1.0), tc_choice.postprocess)["tc"], region_mask(ref, "tc"))


def test_specks_predicted_in_every_region_are_removed_from_every_region():
    """A 2D model's typical false positives: the same specks in WT, TC and ET. Chosen outer region first, TC and WT
    could not drop them (ET's copies stay in them by nesting) and kept every speck; inner first, all three do."""
    far = block((2, 2, 2), 1) | block((2, 2, 3), 1) | block((44, 44, 28), 1) | block((44, 44, 29), 1)  # no tumour
    cases = []
    for has_et in (True, True, False):
        ref = tumour(has_et)
        assert not (far & (ref > 0)).any()
        masks = masks_of(ref)
        for region in masks:
            masks[region] = masks[region] | far
        cases.append((masks, ref, (1.0, 1.0, 1.0)))
    choice = choose(cases, dice, candidates_mm3=SIZES, et_candidates_mm3=ETS)
    assert all(choice.postprocess.min_component_mm3[r] > 0 for r in ("wt", "tc", "et")), choice.postprocess
    for masks, ref, spacing in cases:
        out = apply(masks, spacing, choice.postprocess)
        assert all(np.array_equal(out[r], region_mask(ref, r)) for r in ("wt", "tc", "et"))
    assert all(choice.after[r] == 1.0 > choice.before[r] for r in ("wt", "tc", "et"))


# --- the main tumour (train.main_tumour): components under a fraction of the largest, from every region ---------

def _with_far_tumour(far: int, real: bool) -> tuple:
    """A tumour (WT ball r=9, TC r=5, ET r=2) and, in a far corner, a block of ``far`` voxels a side predicted
    as WT, TC and ET: a false tumour, or (``real``) a second real one that the reference holds and the prediction
    finds as it is. Too big for any component size (``far`` >= 11: over 1000 mm3), smaller than the main tumour
    (3071 voxels of WT)."""
    ref = labels_from(ball((30, 30, 16), 9), ball((30, 30, 16), 5), ball((30, 30, 16), 2))
    second = block((1, 1, 1), far)
    if real:
        ref[second] = OEDEMA
        ref[block((2, 2, 2), far - 2)] = NECROTIC
        return masks_of(ref), ref, (1.0, 1.0, 1.0)
    return {r: m | second for r, m in masks_of(ref).items()}, ref, (1.0, 1.0, 1.0)


def test_keep_main_drops_smaller_tumours_from_every_region_and_zero_keeps_all():
    masks, _, spacing = _with_far_tumour(12, real=False)
    nested = nested_by_hand(masks)
    assert keep_main(nested, 0.0) == nested and all(keep_main(nested, 0.0)[r] is nested[r] for r in nested)
    assert int(nested["wt"].sum()) == 3071 + 12**3
    for fraction in (0.6, 1.0):  # 1728 / 3071 = 0.56: kept at 0.5, gone above
        out = keep_main(nested, fraction)
        assert all(not out[r][block((1, 1, 1), 12)].any() for r in out)
        assert all(np.array_equal(out[r], nested[r] & ~block((1, 1, 1), 12)) for r in out)
    assert np.array_equal(keep_main(nested, 0.5)["et"], nested["et"])
    twin = {"wt": ball((12, 12, 16), 8) | ball((36, 36, 16), 8)}
    assert np.array_equal(keep_main(twin, 1.0)["wt"], twin["wt"])  # two tumours of one size: both the largest
    assert np.array_equal(keep_main({"wt": twin["wt"] | ball((12, 36, 16), 7)}, 1.0)["wt"], twin["wt"])
    pp = PostProcess({"wt": 0.0}, 0.0, 0.6)
    assert np.array_equal(apply(masks, spacing, pp)["wt"], keep_main(nested, 0.6)["wt"])  # after the nesting


def test_main_fraction_is_written_only_when_used_and_read_back():
    assert "main_fraction" not in PostProcess({"wt": 10}, 0).to_dict()  # model files without it: byte for byte
    pp = PostProcess({"wt": 10}, 0, 0.2)
    assert pp.to_dict()["main_fraction"] == 0.2 and PostProcess.from_dict(json.loads(json.dumps(pp.to_dict()))) == pp
    assert pp.describe() == "WT >= 10 mm3; tumours under 0.2 x the largest dropped"


def test_a_false_far_tumour_too_big_for_any_size_is_dropped_by_the_main_tumour_choice():
    cases = [_with_far_tumour(far, real=False) for far in (11, 12, 13)]
    plain = choose(cases, dice, candidates_mm3=SIZES, et_candidates_mm3=ETS)
    assert plain.postprocess.main_fraction == 0.0 and "main_fraction" not in plain.tried  # the default: as before
    chosen = choose(cases, dice, candidates_mm3=SIZES, et_candidates_mm3=ETS, main_fractions=(0.05, 0.2, 0.5, 1.0))
    assert chosen.postprocess.min_component_mm3 == plain.postprocess.min_component_mm3
    assert chosen.postprocess.main_fraction == 1.0  # 0.5 would keep 13**3 = 2197 voxels (0.72 of the main one)
    assert chosen.tried["main_fraction"][0.0] < chosen.tried["main_fraction"][1.0]
    assert all(v == 1.0 for v in chosen.after.values()) and all(v < 1.0 for v in chosen.before.values())
    for masks, ref, spacing in cases:
        out = apply(masks, spacing, chosen.postprocess)
        assert all(np.array_equal(out[r], region_mask(ref, r)) for r in out)


def test_a_second_real_tumour_keeps_the_main_fraction_at_zero():
    cases = [_with_far_tumour(far, real=True) for far in (11, 12, 13)]
    chosen = choose(cases, dice, candidates_mm3=SIZES, et_candidates_mm3=ETS, main_fractions=(0.05, 0.2, 0.5, 1.0))
    assert chosen.postprocess.main_fraction == 0.0 and chosen.tried["main_fraction"][1.0] < chosen.tried[
        "main_fraction"][0.0]
