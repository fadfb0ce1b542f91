from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brats_seg.data.layouts import canonical_path
from brats_seg.data.validation import ValidateParams, duplicate_of, read_manifest, run_validate
from brats_seg.errors import DataError
from tests.support.cohorts import write_synthetic_cohort


def _resave(path, data, affine=None):
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), str(path))


def _break(raw, case_id, how):
    case = raw / case_id
    flair = canonical_path(case, case_id, "flair")
    if how == "truncated":
        data = flair.read_bytes()
        flair.write_bytes(data[: len(data) // 3])
    elif how == "missing":
        canonical_path(case, case_id, "t1ce").unlink()
    elif how == "grid":
        img = nib.load(str(flair))
        _resave(flair, np.asarray(img.dataobj)[:, :, :-2])
    elif how == "label":
        seg_path = canonical_path(case, case_id, "seg")
        seg = np.asarray(nib.load(str(seg_path)).dataobj).copy()
        seg[seg == 4] = 3
        _resave(seg_path, seg)
    elif how == "nan":
        t2 = canonical_path(case, case_id, "t2")
        data = np.asarray(nib.load(str(t2)).dataobj).astype(np.float32)
        data[20:22, 20:22, 10] = np.nan
        _resave(t2, data)
    elif how == "zero":
        t1 = canonical_path(case, case_id, "t1")
        _resave(t1, np.zeros(nib.load(str(t1)).shape, dtype=np.int16))


DEFECTS = {
    "truncated": "unreadable file(s): flair",
    "missing": "missing file(s): t1ce",
    "grid": "files are not on one grid",
    "label": "labels outside {0, 1, 2, 4}: 3",
    "nan": "4 NaN or Inf voxels",
    "zero": "all-zero modality: t1",
}


@pytest.fixture
def broken_cohort(tmp_path):
    raw = tmp_path / "raw"
    ids = write_synthetic_cohort(raw, len(DEFECTS) + 2)
    for case_id, how in zip(ids, DEFECTS):
        _break(raw, case_id, how)
    return raw, dict(zip(ids, DEFECTS))


def _run(raw, tmp_path, max_bad=1.0):
    return run_validate(ValidateParams(max_bad_fraction=max_bad, workers=1, min_brain_voxels=100), raw,
                        tmp_path / "manifest.parquet", tmp_path / "reports", tmp_path / "validation.json")


def test_each_defect_is_quarantined_with_its_reason_and_the_rest_go_on(tmp_path, broken_cohort):
    raw, defects = broken_cohort
    metrics = _run(raw, tmp_path)
    manifest = read_manifest(tmp_path / "manifest.parquet", status=None).set_index("case_id")
    for case_id, how in defects.items():
        assert manifest.loc[case_id, "status"] == "quarantined", how
        assert DEFECTS[how] in manifest.loc[case_id, "reasons"], (how, manifest.loc[case_id, "reasons"])
    grid_case = next(c for c, how in defects.items() if how == "grid")
    assert "brain voxels" not in manifest.loc[grid_case, "reasons"]  # the grid alone, no misleading second reason
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == 2 and set(ok.index).isdisjoint(defects)
    assert metrics == json.loads((tmp_path / "validation.json").read_text())
    assert (metrics["cases"], metrics["ok"], metrics["quarantined"]) == (8, 2, 6)
    report = pd.read_csv(tmp_path / "reports" / "quarantine.csv")
    assert sorted(report["case_id"]) == sorted(defects)
    assert (tmp_path / "reports" / "data_docs" / "index.html").is_file()
    assert read_manifest(tmp_path / "manifest.parquet")["case_id"].tolist() == sorted(ok.index)


def test_manifest_records_the_facts(tmp_path, tiny_cohort):
    _run(tiny_cohort, tmp_path)
    row = read_manifest(tmp_path / "manifest.parquet").iloc[0]
    seg = np.asarray(nib.load(str(canonical_path(tiny_cohort / row["case_id"], row["case_id"], "seg"))).dataobj)
    assert row["shape"] == "48x48x24" and row["spacing"] == "1.00x1.00x1.00" and row["same_grid"]
    for label in (0, 1, 2, 4):
        assert row[f"voxels_label_{label}"] == int((seg == label).sum())
    flair = np.asarray(nib.load(str(canonical_path(tiny_cohort / row["case_id"], row["case_id"], "flair"))).dataobj)
    assert row["brain_voxels"] == int((flair != 0).sum())
    assert row["flair_p50"] == pytest.approx(np.percentile(flair[flair != 0], 50))


def test_too_many_bad_cases_fail_the_stage_after_writing_the_report(tmp_path, broken_cohort):
    raw, _ = broken_cohort
    with pytest.raises(DataError, match=r"6 of 8 cases failed validation, more than validate.max_bad_fraction=0.5"):
        _run(raw, tmp_path, max_bad=0.5)
    assert (tmp_path / "reports" / "quarantine.csv").is_file()


def test_duplicate_case_ids_break_a_hard_rule(tmp_path, tiny_cohort):
    first = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]
    twin = first.upper()
    shutil.copytree(tiny_cohort / first, tiny_cohort / twin)
    for f in (tiny_cohort / twin).iterdir():
        f.rename(f.with_name(f.name.replace(first, twin)))
    with pytest.raises(DataError, match="case ids are not unique"):
        _run(tiny_cohort, tmp_path)


def test_empty_cohort(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="no cases in .*run the download stage first"):
        _run(tmp_path / "raw", tmp_path)


def _copy_case(src_dir, dest_dir, link=False, uncompressed=False):
    """A new case ``dest_dir`` with ``src_dir``'s files: byte copies, symbolic links, or re-encoded .nii."""
    dest_dir.mkdir()
    for f in sorted(src_dir.iterdir()):
        target = dest_dir / f.name.replace(src_dir.name, dest_dir.name)
        if link:
            target.symlink_to(f)
        elif uncompressed:
            nib.save(nib.load(str(f)), str(target).removesuffix(".gz"))
        else:
            shutil.copyfile(f, target)


def test_copies_and_links_of_a_case_are_quarantined_as_duplicates_of_the_first_by_id(tmp_path, tiny_cohort):
    ids = sorted(p.name for p in tiny_cohort.iterdir())
    _copy_case(tiny_cohort / ids[0], tiny_cohort / "BraTS20_Synthetic_901")
    _copy_case(tiny_cohort / ids[1], tiny_cohort / "BraTS20_Synthetic_902", link=True)
    _copy_case(tiny_cohort / ids[2], tiny_cohort / "BraTS20_Synthetic_000", uncompressed=True)  # sorts first
    metrics = _run(tiny_cohort, tmp_path)
    manifest = read_manifest(tmp_path / "manifest.parquet", status=None).set_index("case_id")
    expected = {"BraTS20_Synthetic_901": ids[0], "BraTS20_Synthetic_902": ids[1], ids[2]: "BraTS20_Synthetic_000"}
    for case_id, original in expected.items():
        assert manifest.loc[case_id, "status"] == "quarantined"
        assert manifest.loc[case_id, "reasons"] == (f"same image content as {original} (a copy of it or a link to "
                                                    f"it); remove one of the two")
    assert sorted(manifest.index[manifest["status"] == "ok"]) == ["BraTS20_Synthetic_000", *ids[:2], ids[3]]
    assert manifest["image_sha256"].nunique() == 4 and metrics["quarantined"] == 3


def test_duplicate_of_pairs_each_later_case_with_the_first_by_sorted_id():
    assert duplicate_of(["c", "a", "b", "d", "e"], ["x", "x", "y", "x", ""]) == ["a", "", "", "a", ""]
    assert duplicate_of(["a", "b"], ["", ""]) == ["", ""]


_VALIDATE_TWICE = """
import sys
from pathlib import Path
from brats_seg.data.validation import ValidateParams, run_validate
from brats_seg.errors import DataError
raw, out = Path(sys.argv[1]), Path(sys.argv[2])
run_validate(ValidateParams(workers=1, min_brain_voxels=100), raw, out / "m.parquet", out / "r", out / "v.json")
try:  # the failing exit path: every case breaks the brain-voxel rule
    run_validate(ValidateParams(workers=1, min_brain_voxels=10**9, max_bad_fraction=0.0), raw, out / "m2.parquet",
                 out / "r2", out / "v2.json")
except DataError as exc:
    print("refused:", exc)
"""


def test_validate_leaves_nothing_in_the_temporary_folder_on_success_or_failure(tmp_path, tiny_cohort):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.run([sys.executable, "-c", _VALIDATE_TWICE, str(tiny_cohort), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "refused: 4 of 4 cases failed validation" in proc.stdout
    assert (tmp_path / "r" / "data_docs" / "index.html").is_file()  # the docs go to the report folder instead
    assert list(temp.iterdir()) == []


def test_label_values_that_are_no_label_are_quarantined_with_the_values_the_source_holds(tmp_path):
    """A BraTS 2023 label map with NaN, negative and fractional voxels: named as they are, not as 0 or 255."""
    from brats_seg.data.download import run_download
    from brats_seg.data.sources import DownloadParams, LocalSource
    from brats_seg.data.synthetic import MODALITIES, make_case

    source = tmp_path / "incoming"
    names = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    for i, case_id in enumerate(["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"], start=1):
        case = make_case(i, 0, (48, 48, 24))
        folder = source / case_id
        folder.mkdir(parents=True)
        for m in MODALITIES:
            nib.save(nib.Nifti1Image(case.images[m], case.affine), str(folder / f"{case_id}-{names[m]}.nii.gz"))
        seg = case.seg.astype(np.float32)
        seg[seg == 4] = 3  # the 2023 convention
        if i == 2:
            seg[0, 0, 0], seg[0, 0, 1], seg[0, 0, 2] = np.nan, -1, 0.5
        nib.save(nib.Nifti1Image(seg, case.affine), str(folder / f"{case_id}-seg.nii.gz"))
    raw = tmp_path / "raw"
    run_download(DownloadParams(source="local", workers=1, local=LocalSource(str(source))), raw, tmp_path / "cache", 0)
    _run(raw, tmp_path)
    manifest = read_manifest(tmp_path / "manifest.parquet", status=None).set_index("case_id")
    assert manifest.loc["BraTS-GLI-00001-000", "status"] == "ok"
    assert manifest.loc["BraTS-GLI-00002-000", "reasons"] == "labels outside {0, 1, 2, 4}: -1,0.5,nan"
