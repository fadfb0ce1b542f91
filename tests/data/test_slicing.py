from __future__ import annotations

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
from brats_seg.data.preprocess import CaseGeometry, restore_labels
from brats_seg.data.slicing import SliceParams, run_slice, split_cases
from brats_seg.data.validation import ValidateParams, read_manifest, run_validate
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import ShardError, list_shards, read_shard
from tests.conftest import write_synthetic_cohort


def _validated(raw, tmp_path):
    run_validate(ValidateParams(workers=1), raw, tmp_path / "m.parquet", tmp_path / "rep", tmp_path / "v.json")
    return read_manifest(tmp_path / "m.parquet")


def test_split_is_by_patient_seeded_and_covers_every_split():
    ids = [f"c{i:02d}" for i in range(20)]
    a = split_cases(ids, (0.7, 0.15, 0.15), seed=1)
    assert a == split_cases(list(reversed(ids)), (0.7, 0.15, 0.15), seed=1)
    assert a != split_cases(ids, (0.7, 0.15, 0.15), seed=2)
    counts = pd.Series(a).value_counts().to_dict()
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert set(split_cases(ids[:3], (0.7, 0.15, 0.15), seed=0).values()) == {"train", "val", "test"}


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
    assert meta["cases"] == {"train": 4, "val": 1, "test": 1}
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
