from __future__ import annotations

import collections
import hashlib
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from brats_seg.data.dataset import load_split
from brats_seg.data.labels import region_mask
from brats_seg.data.layouts import write_case
from brats_seg.data.preprocess import CaseGeometry, restore_labels
from brats_seg.data.slicing import (
    SliceParams,
    patient_id,
    patient_position,
    run_slice,
    split_cases,
    split_digest,
)
from brats_seg.data.synthetic import make_case
from brats_seg.data.validation import ValidateParams, read_manifest, run_validate
from brats_seg.errors import DataError
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import ShardError, list_shards, read_shard
from tests.conftest import TINY_SHAPE, write_synthetic_cohort


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
    assert a != split_cases(ids, FRACTIONS, seed=2)
    # the rule, recomputed by hand: sha256("seed:patient") -> [0, 1), cut at 0.7 and 0.85
    by_hand = {}
    for case_id in ids:
        u = int(hashlib.sha256(f"1:{case_id}".encode()).hexdigest()[:16], 16) / 2**64
        by_hand[case_id] = "train" if u < 0.7 else "val" if u < 0.85 else "test"
    assert a == by_hand
    for seed in range(20):  # with three or more patients no split with a non-zero fraction is empty
        assert set(split_cases(_ids(1, 4), FRACTIONS, seed).values()) == {"train", "val", "test"}
    assert set(split_cases(_ids(1, 30), (1.0, 0.0, 0.0), seed=0).values()) == {"train"}


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


def _hash_split(ids: list[str], seed: int) -> dict[str, str]:
    return {c: "train" if (u := patient_position(c, seed)) < 0.7 else "val" if u < 0.85 else "test" for c in ids}


def test_an_empty_split_is_lent_the_nearest_patient_and_only_that_patient_moves_later():
    ids, seed = _ids(1, 9), 4  # these eight patients put nobody in val by hash
    by_hash = _hash_split(ids, seed)
    assert "val" not in by_hash.values()
    splits = split_cases(ids, FRACTIONS, seed)
    lent = max((c for c in ids if by_hash[c] == "train"), key=lambda c: patient_position(c, seed))
    assert {c: s for c, s in splits.items() if by_hash[c] != s} == {lent: "val"}
    grown = split_cases(_ids(1, 41), FRACTIONS, seed)  # val now fills by itself: the lent patient goes home
    assert grown == _hash_split(_ids(1, 41), seed)
    assert [c for c in ids if grown[c] != splits[c]] == [lent]


def test_too_few_patients_for_a_training_split():
    with pytest.raises(DataError, match="too few for the split"):
        split_cases(["only"], (0.0, 0.5, 0.5), seed=0)


def test_slice_stage_outputs(tmp_path):
    raw = tmp_path / "raw"
    write_synthetic_cohort(raw, 6, tumour_free=(6,))
    manifest = _validated(raw, tmp_path)
    params = SliceParams(size=32, keep_empty_fraction=0.0, workers=2)
    meta = run_slice(params, raw, manifest, tmp_path / "slices", seed=3)
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
    assert meta["cases"] == meta["patients"] == {"train": 4, "val": 1, "test": 1}
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
    meta = run_slice(SliceParams(size=32, workers=1), raw, pd.DataFrame({"case_id": ids}), tmp_path / "s", seed=0)
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
    run_slice(SliceParams(size=64, workers=1), raw, _validated(raw, tmp_path), tmp_path / "slices", seed=0)
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
              tmp_path / "slices", seed=0)
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
