from __future__ import annotations

import collections
import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brats_seg.data.dataset import load_split, open_split
from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import discover_cases, write_case
from brats_seg.data.preprocess import CaseGeometry, restore_labels
from brats_seg.data.slicing import (
    SliceParams,
    patient_id,
    patient_position,
    run_slice,
    split_cases,
    split_digest,
)
from brats_seg.data.synthetic import case_id_for, make_case, tumour_free_indices
from brats_seg.data.validation import ValidateParams, read_manifest, run_validate
from brats_seg.errors import ConfigError, DataError
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import ShardError, list_shards, read_shard
from tests.support.cohorts import COHORT_SEED, TINY_SHAPE, write_synthetic_cohort


def _validated(raw, tmp_path):
    run_validate(ValidateParams(workers=1), raw, tmp_path / "m.parquet", tmp_path / "rep", tmp_path / "v.json")
    return read_manifest(tmp_path / "m.parquet")


FRACTIONS = (0.7, 0.15, 0.15)


def _ids(start: int, stop: int) -> list[str]:
    return [f"BraTS20_Training_{i:03d}" for i in range(start, stop)]


def test_split_is_a_hash_of_patient_and_seed_and_covers_every_split():
    ids = _ids(1, 21)
    a = split_cases(ids, FRACTIONS, seed=1)
    assert a == split_cases(list(reversed(ids)), FRACTIONS, seed=1)
    assert a != split_cases(ids, FRACTIONS, seed=3)
    # the rule, recomputed by hand: sha256("seed:patient") -> [0, 1), cut at 0.7 and 0.85
    by_hand = {}
    for case_id in ids:
        u = int(hashlib.sha256(f"1:{case_id}".encode()).hexdigest()[:16], 16) / 2**64
        by_hand[case_id] = "train" if u < 0.7 else "val" if u < 0.85 else "test"
    assert a == by_hand
    assert set(split_cases(_ids(1, 30), (1.0, 0.0, 0.0), seed=0).values()) == {"train"}  # fraction 0: empty, fine


@pytest.mark.parametrize("seed", range(6))
def test_adding_a_quarter_more_cases_moves_no_existing_patient(seed):
    for n in (40, 200):
        before = split_cases(_ids(1, n + 1), FRACTIONS, seed)
        after = split_cases(_ids(1, n + n // 4 + 1), FRACTIONS, seed)
        assert {c: after[c] for c in before} == before
        # removing (or quarantining) every third case moves nobody either
        fewer = split_cases([c for i, c in enumerate(before) if i % 3], FRACTIONS, seed)
        assert fewer == {c: before[c] for c in fewer}


def test_realised_fractions_stay_close_to_the_configured_ones():
    n, totals = 200, collections.Counter()
    for seed in range(10):
        counts = collections.Counter(split_cases(_ids(1, n + 1), FRACTIONS, seed).values())
        totals.update(counts)
        for split, fraction in zip(("train", "val", "test"), FRACTIONS):
            spread = math.sqrt(n * fraction * (1 - fraction))  # a binomial draw per split
            assert abs(counts[split] - fraction * n) <= 4 * spread, (seed, dict(counts))
    for split, fraction in zip(("train", "val", "test"), FRACTIONS):
        assert abs(totals[split] / (10 * n) - fraction) < 0.025, dict(totals)


def test_time_points_of_one_patient_share_a_split():
    assert patient_id("BraTS-GLI-00123-001") == "BraTS-GLI-00123"
    assert patient_id("BraTS-MEN-00007-000") == "BraTS-MEN-00007"
    assert patient_id("BraTS20_Training_001") == "BraTS20_Training_001"
    assert patient_id("BRATS_001") == "BRATS_001"
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(40) for t in range(3)]
    splits = split_cases(ids, FRACTIONS, seed=7)
    for p in range(40):
        assert len({splits[f"BraTS-GLI-{p:05d}-{t:03d}"] for t in range(3)}) == 1
    # a patient's split does not depend on how many of its time points are present
    assert split_cases(ids[::3], FRACTIONS, seed=7) == {c: splits[c] for c in ids[::3]}


def test_brats2023_time_points_group_in_any_letter_case_as_layouts_detect_them(tmp_path):
    # layouts detect BraTS 2023 names in any case: a lower-case folder is a BraTS 2023 case of its own id
    case = make_case(1, 0, (16, 16, 8))
    src = tmp_path / "src" / "brats-gli-00001-001"
    for new, old in {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": None}.items():
        data = case.seg.astype(np.float32) if old is None else case.images[old]
        src.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, case.affine), str(src / f"brats-gli-00001-001-{new}.nii.gz"))
    [found] = discover_cases(tmp_path / "src")
    assert (found.case_id, found.convention) == ("brats-gli-00001-001", "brats2023")
    # ... and is a time point of the same patient as BraTS-GLI-00001-000, in the challenge's spelling
    assert patient_id(found.case_id) == patient_id("BraTS-GLI-00001-000") == "BraTS-GLI-00001"
    assert patient_id("Brats-Gli-00001-002") == "BraTS-GLI-00001"
    ids = [found.case_id, "BraTS-GLI-00001-000"] + [f"BraTS-GLI-{p:05d}-000" for p in range(2, 40)]
    splits = split_cases(ids, FRACTIONS, seed=7)
    assert splits[found.case_id] == splits["BraTS-GLI-00001-000"]


def _hash_split(ids: list[str], seed: int) -> dict[str, str]:
    return {c: "train" if (u := patient_position(c, seed)) < 0.7 else "val" if u < 0.85 else "test" for c in ids}


def _refusal(ids: list[str], seed: int, fractions=FRACTIONS) -> str:
    with pytest.raises(DataError) as err:
        split_cases(ids, fractions, seed)
    return str(err.value)


def test_a_split_that_draws_nobody_stops_the_stage_naming_seeds_that_fill_every_split():
    ids, seed = _ids(1, 9), 4  # these eight patients put nobody in val by hash: 7 train, 1 test
    assert sorted(set(_hash_split(ids, seed).values())) == ["test", "train"]
    said = _refusal(ids, seed)
    assert said.startswith("the val split of slice.split [0.7, 0.15, 0.15] drew none of the 8 patient(s) under "
                           "base.seed 4 ("), said
    named = [int(n) for n in re.search(r"set base\.seed to ([\d, or]+) \(", said)[1].replace(" or", ",").split(",")]
    # the three smallest seeds under which this very cohort fills every split, and nobody is moved under them
    fill = [s for s in range(100) if set(_hash_split(ids, s).values()) == {"train", "val", "test"}]
    assert named == fill[:3] == [1, 3, 6]
    for s in named:
        assert split_cases(ids, FRACTIONS, s) == _hash_split(ids, s)
    # a split with a fraction of 0 may stay empty
    assert set(split_cases(ids, (0.85, 0.0, 0.15), seed).values()) == {"train", "test"}


def test_too_few_patients_for_every_split_is_one_sentence_that_says_add_cases():
    said = _refusal(["only"], 0)
    assert said == ("the val and test splits of slice.split [0.7, 0.15, 0.15] drew none of the 1 patient(s) under "
                    "base.seed 0 (a patient's split is its hash alone and nobody is moved to fill one); add cases "
                    "(training needs a val patient, evaluate a test patient).")
    assert "base.seed to" not in _refusal(["a", "b"], 0)  # two patients cannot fill three splits under any seed
    assert split_cases(["only"], (1.0, 0.0, 0.0), 0) == {"only": "train"}


def test_the_slice_stage_refuses_an_empty_split_before_it_writes_anything(tmp_path):
    manifest = pd.DataFrame({"case_id": _ids(1, 9)})
    with pytest.raises(DataError, match="the val split of slice.split"):
        run_slice(SliceParams(workers=1), tmp_path / "raw", manifest, tmp_path / "slices", seed=4)
    assert not (tmp_path / "slices").exists()


def test_a_split_given_a_fraction_of_0_is_refused_by_the_stage_that_needs_it_in_one_sentence(tmp_path):
    from brats_seg.evaluation.evaluate import evaluate_cases

    raw = tmp_path / "raw"
    write_synthetic_cohort(raw, 3, shape=(32, 32, 16))
    run_slice(SliceParams(size=16, split=(1.0, 0.0, 0.0), workers=1), raw, _validated(raw, tmp_path),
              tmp_path / "slices", seed=0)
    with pytest.raises(DataError) as err:
        open_split(tmp_path / "slices", "val")
    assert str(err.value) == ("slice.split [1.0, 0.0, 0.0] gives the val split a fraction of 0, and training (it "
                              "picks the best epoch on val) needs it; give val a fraction above 0 and rerun the slice "
                              "stage.")
    with pytest.raises(DataError, match=r"gives the test split a fraction of 0, and evaluate needs it; give test"):
        evaluate_cases(None, tmp_path / "slices", raw)


def test_the_test_cohort_seed_fills_every_split_of_the_tiny_cohorts():
    """tests/support/cohorts.py's COHORT_SEED: synthetic cases 1-3 hash to three splits (so any cohort from 1 to
    n >= 3 fills them),
    and so do 1, 2, 4, 5 (tests/test_dask.py quarantines 3); the tiny pipeline's tumour-free case is in train."""
    def syn(*numbers: int) -> list[str]:
        return [case_id_for(i) for i in numbers]

    assert sorted(_hash_split(syn(1, 2, 3), COHORT_SEED).values()) == ["test", "train", "val"]
    assert set(_hash_split(syn(1, 2, 4, 5), COHORT_SEED).values()) == {"train", "val", "test"}
    [free] = tumour_free_indices(5, 0.2, COHORT_SEED)
    assert _hash_split(syn(free), COHORT_SEED)[case_id_for(free)] == "train"


def test_slice_stage_outputs(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_cohort(raw, 6, tumour_free=(6,))
    manifest = _validated(raw, tmp_path)
    params = SliceParams(size=32, keep_empty_fraction=0.0, workers=2)
    meta = run_slice(params, raw, manifest, tmp_path / "slices", seed=15)  # fills every split, 006 in train
    index = pd.read_parquet(tmp_path / "slices" / "index.parquet")
    cases = pd.read_parquet(tmp_path / "slices" / "cases.parquet")
    # no patient in two splits, and the index agrees with the per-case table
    assert (index.groupby("case_id")["split"].nunique() == 1).all()
    with_slices = cases[cases["n_slices"] > 0]
    per_case = index.groupby("case_id")["split"].first().to_dict()
    assert dict(zip(with_slices["case_id"], with_slices["split"])) == per_case
    # a tumour-free case contributes no slice to training when empty slices are not kept, all its brain
    # slices to validation or test
    free = cases.set_index("case_id").loc["BraTS20_Synthetic_006"]
    n_rows = int((index["case_id"] == "BraTS20_Synthetic_006").sum())
    assert free["n_slices"] == n_rows and (n_rows == 0) == (free["split"] == "train")
    assert all(index[c].dtype == np.int64 for c in ("z", "row", "tumour_pixels", "brain_pixels"))
    for split in ("train", "val", "test"):
        assert len(load_split(tmp_path / "slices", split)) == meta["slices"][split]
    assert meta["cases"] == meta["patients"] == {"train": 3, "val": 1, "test": 2}
    assert (index["patient_id"] == index["case_id"]).all() and (cases["patient_id"] == cases["case_id"]).all()
    # training slices without tumour dropped at keep_empty_fraction=0; every brain slice kept elsewhere
    train = index[index["split"] == "train"]
    assert (train["tumour_pixels"] > 0).all()
    assert (index["brain_pixels"] > 0).all()
    for shard_path in list_shards(tmp_path / "slices" / "shards"):
        shard = read_shard(shard_path)
        rows = index[index["shard"] == f"shards/{shard_path.name}"]
        assert shard["images"].shape == (len(rows), 4, 32, 32) and shard["images"].dtype == np.float16
        assert shard["labels"].dtype == np.uint8 and set(np.unique(shard["labels"])) <= {0, 1, 2, 4}
        assert rows["z"].tolist() == shard["z"].tolist()
        assert rows["tumour_pixels"].tolist() == region_mask(shard["labels"]).sum(axis=(1, 2)).tolist()


def test_time_points_are_recorded_under_one_patient_in_the_index_and_cases_tables(tmp_path):
    raw = tmp_path / "raw"
    ids = ["BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]
    for i, case_id in enumerate(ids, start=1):
        case = make_case(i, 0, TINY_SHAPE)
        write_case(raw, case_id, case.images, case.seg, case.affine)
    meta = run_slice(SliceParams(size=32, workers=1), raw, pd.DataFrame({"case_id": ids}), tmp_path / "s",
                     seed=9)  # the three patients fill train, val and test
    cases = pd.read_parquet(tmp_path / "s" / "cases.parquet").set_index("case_id")
    index = pd.read_parquet(tmp_path / "s" / "index.parquet")
    assert cases["patient_id"].to_dict() == {c: c[:15] for c in ids}
    assert cases.loc["BraTS-GLI-00001-000", "split"] == cases.loc["BraTS-GLI-00001-001", "split"]
    assert (index["patient_id"] == index["case_id"].str[:15]).all()
    assert sum(meta["patients"].values()) == 3 and sum(meta["cases"].values()) == 4
    assert meta["split_digest"] == split_digest(cases["split"].to_dict())


def test_test_cases_map_back_to_their_labels(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_cohort(raw, 4, shape=(96, 96, 40))
    run_slice(SliceParams(size=64, workers=1), raw, _validated(raw, tmp_path), tmp_path / "slices", seed=COHORT_SEED)
    cases = pd.read_parquet(tmp_path / "slices" / "cases.parquet")
    for rec in cases[cases["split"] != "train"].to_dict("records"):
        shard = read_shard(tmp_path / "slices" / rec["shard"])
        back = restore_labels(shard["labels"], shard["z"], CaseGeometry.from_record(rec))
        seg, _ = read_nifti(raw / rec["case_id"] / f"{rec['case_id']}_seg.nii.gz")
        wt, wb = region_mask(seg), region_mask(back)
        assert 2 * (wt & wb).sum() / (wt.sum() + wb.sum()) > 0.95


def test_modalities_subset_gives_grayscale_slices(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_cohort(raw, 3)
    run_slice(SliceParams(size=32, modalities=("flair",), workers=1), raw, _validated(raw, tmp_path),
              tmp_path / "slices", seed=COHORT_SEED)
    shard = read_shard(list_shards(tmp_path / "slices" / "shards")[0])
    assert shard["images"].shape[1] == 1


_WRITER = """
import sys, numpy as np
from brats_seg.io.shards import write_shard
images = np.ones((4000, 4, 128, 128), np.float16)  # 500 MB: takes a while to write
print("writing", flush=True)
write_shard(sys.argv[1], images, np.zeros((4000, 128, 128), np.uint8), np.arange(4000))
"""


def test_a_writer_killed_midway_leaves_no_shard_that_reads_as_whole(tmp_path):
    target = tmp_path / "shards" / "case.npz"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 20
    while time.time() < deadline and not any((tmp_path / "shards").glob(".*")):
        time.sleep(0.01)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = list((tmp_path / "shards").iterdir())
    assert not target.exists() and list_shards(tmp_path / "shards") == []
    assert leftovers, "the writer should have been killed while writing its temporary file"
    for partial in leftovers:
        with pytest.raises(ShardError):
            read_shard(partial)


def test_k_fold_tests_every_patient_once_validates_on_the_next_fold_and_never_moves_anyone():
    ids = _ids(1, 41)
    folds = [split_cases(ids, FRACTIONS, seed=3, folds=4, fold=k) for k in range(4)]
    position = {c: int(patient_position(c, 3) * 4) for c in ids}
    for k, splits in enumerate(folds):
        assert {c for c, s in splits.items() if s == "test"} == {c for c in ids if position[c] == k}
        assert {c for c, s in splits.items() if s == "val"} == {c for c in ids if position[c] == (k + 1) % 4}
    tested = collections.Counter(c for splits in folds for c, s in splits.items() if s == "test")
    assert set(tested) == set(ids) and set(tested.values()) == {1}  # every patient tested exactly once
    more = split_cases(_ids(1, 61), FRACTIONS, seed=3, folds=4, fold=2)  # new cases move nobody already there
    assert {c: more[c] for c in ids} == folds[2]
    assert split_cases(ids, FRACTIONS, seed=3) == _hash_split(ids, 3)  # folds=0: the fraction split as before


def test_a_fold_that_draws_nobody_is_one_sentence_naming_seeds_that_fill_every_fold():
    ids = _ids(1, 7)
    seed = next(s for s in range(100) if len({int(patient_position(c, s) * 5) for c in ids}) < 5)
    with pytest.raises(DataError, match=r"slice.folds=5 drew none of the 6 patient\(s\) under base.seed "
                                        rf"{seed} .*set base.seed to \d+"):
        split_cases(ids, FRACTIONS, seed, folds=5, fold=0)
    with pytest.raises(ConfigError, match="slice.fold"):
        SliceParams(folds=4, fold=4)
    with pytest.raises(ConfigError, match="slice.folds"):
        SliceParams(folds=2)
