"""The two real BraTS cases (2021 and 2023 naming) through download (local) -> validate -> slice."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brats_seg.data.download import run_download
from brats_seg.data.labels import region_mask
from brats_seg.data.preprocess import CaseGeometry, restore_labels
from brats_seg.data.slicing import run_slice
from brats_seg.data.sources import DownloadParams, LocalSource
from brats_seg.data.spec import SliceParams
from brats_seg.data.validation import ValidateParams, read_manifest, run_validate
from brats_seg.io.nifti import read_nifti
from brats_seg.io.shards import read_shard

WT_VOXELS = {"BraTS2021_00006": 137911, "BraTS-GLI-00000-000": 57305}  # from the data's README


def test_real_cases_through_the_data_stages(tmp_path, real_data):
    raw = tmp_path / "raw"
    record = run_download(DownloadParams(source="local", workers=2, local=LocalSource(str(real_data))), raw,
                          tmp_path / "cache", seed=0)
    assert {c: v["convention"] for c, v in record["cases"].items()} == {
        "BraTS2021_00006": "brats2020", "BraTS-GLI-00000-000": "brats2023"}
    metrics = run_validate(ValidateParams(workers=2), raw, tmp_path / "m.parquet", tmp_path / "rep",
                           tmp_path / "v.json")
    assert metrics["ok"] == 2
    manifest = read_manifest(tmp_path / "m.parquet").set_index("case_id")
    assert manifest.loc["BraTS2021_00006", ["voxels_label_1", "voxels_label_2", "voxels_label_4"]].tolist() == [
        25506, 85957, 26448]
    assert manifest.loc["BraTS-GLI-00000-000", "voxels_label_4"] == 32731  # 3 -> 4
    for case_id, wt in WT_VOXELS.items():
        seg, meta = read_nifti(raw / case_id / f"{case_id}_seg.nii.gz")
        assert region_mask(seg).sum() == wt and seg.shape == (240, 240, 155)

    # every brain slice kept, so that the whole label map can come back: both patients in train (two patients
    # cannot fill three splits, and the split is a patient's hash alone) with every empty slice kept
    run_slice(SliceParams(split=(1.0, 0.0, 0.0), keep_empty_fraction=1.0, workers=2), raw,
              read_manifest(tmp_path / "m.parquet"), tmp_path / "slices", seed=0)
    cases = pd.read_parquet(tmp_path / "slices" / "cases.parquet")
    test = cases.set_index("case_id", drop=False).loc["BraTS2021_00006"].to_dict()
    shard = read_shard(tmp_path / "slices" / test["shard"])
    back = restore_labels(shard["labels"], shard["z"], CaseGeometry.from_record(test))
    seg, _ = read_nifti(raw / test["case_id"] / f"{test['case_id']}_seg.nii.gz")
    a, b = region_mask(seg), region_mask(back)
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.95, dice  # resize error on real anatomy
    assert np.isclose(shard["images"].astype(np.float32)[:, 0][shard["images"][:, 0] != 0].std(), 1.0, atol=0.15)
