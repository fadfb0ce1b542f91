from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brats_seg.data.layouts import (
    UNLABELLED_DIR,
    canonical_files,
    discover_cases,
    list_canonical_cases,
    refuse_outside_links,
    write_canonical,
)
from brats_seg.data.synthetic import MODALITIES, make_case
from brats_seg.errors import DataError
from brats_seg.io.nifti import read_nifti

SHAPE = (32, 32, 16)


def _save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.fixture
def case():
    return make_case(1, 0, SHAPE)


def test_brats2020_folder_with_misnamed_seg_and_uncompressed_files(tmp_path, case):
    src = tmp_path / "src" / "BraTS20_Training_355"
    for m in MODALITIES:
        _save(src / f"BraTS20_Training_355_{m}.nii", case.images[m], case.affine)  # uncompressed
    _save(src / "W39_1998.09.19_Segm.nii", case.seg, case.affine)  # case 355's misnamed label file
    [found] = discover_cases(tmp_path / "src")
    assert found.case_id == "BraTS20_Training_355" and found.convention == "brats2020" and found.labelled
    write_canonical(found, tmp_path / "raw")
    files = canonical_files(tmp_path / "raw" / "BraTS20_Training_355")
    assert all(p is not None and p.name.endswith(".nii.gz") for p in files.values())
    seg, meta = read_nifti(files["seg"])
    assert np.array_equal(seg, case.seg) and np.allclose(meta.affine, case.affine)


def test_brats2023_names_and_labels_are_normalised(tmp_path, case):
    src = tmp_path / "src" / "BraTS-GLI-00001-000"
    for new, old in {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}.items():
        _save(src / f"BraTS-GLI-00001-000-{new}.nii.gz", case.images[old], case.affine)
    seg2023 = case.seg.astype(np.float32)
    seg2023[case.seg == 4] = 3.0  # BraTS 2023: enhancing tumour is 3, stored as float32
    _save(src / "BraTS-GLI-00001-000-seg.nii.gz", seg2023, case.affine)
    [found] = discover_cases(tmp_path / "src")
    assert found.convention == "brats2023"
    write_canonical(found, tmp_path / "raw")
    files = canonical_files(tmp_path / "raw" / "BraTS-GLI-00001-000")
    seg, _ = read_nifti(files["seg"])
    assert seg.dtype == np.uint8 and np.array_equal(seg, case.seg)
    assert np.array_equal(read_nifti(files["t1ce"])[0], case.images["t1ce"])


def test_decathlon_4d_images_are_split_and_relabelled(tmp_path, case):
    root = tmp_path / "Task01_BrainTumour"
    image = np.stack([case.images[m] for m in MODALITIES], axis=-1).astype(np.float32)  # FLAIR, T1w, T1gd, T2w
    msd = np.zeros_like(case.seg)
    msd[case.seg == 2], msd[case.seg == 1], msd[case.seg == 4] = 1, 2, 3
    _save(root / "imagesTr" / "BRATS_001.nii.gz", image, case.affine)
    _save(root / "imagesTr" / "._BRATS_001.nii.gz", image[..., 0], case.affine)  # macOS junk in the real tar
    _save(root / "labelsTr" / "BRATS_001.nii.gz", msd, case.affine)
    _save(root / "imagesTs" / "BRATS_485.nii.gz", image, case.affine)
    found = discover_cases(root)
    assert [(c.case_id, c.labelled) for c in found] == [("BRATS_001", True), ("BRATS_485", False)]
    for c in found:
        write_canonical(c, tmp_path / "raw")
    files = canonical_files(tmp_path / "raw" / "BRATS_001")
    assert np.array_equal(read_nifti(files["seg"])[0], case.seg)
    for m in MODALITIES:
        assert np.array_equal(read_nifti(files[m])[0], case.images[m].astype(np.float32))
    assert [p.name for p in list_canonical_cases(tmp_path / "raw")] == ["BRATS_001"]
    assert (tmp_path / "raw" / UNLABELLED_DIR / "BRATS_485" / "BRATS_485_flair.nii.gz").is_file()


def test_a_case_without_seg_is_kept_apart(tmp_path, case):
    src = tmp_path / "src" / "BraTS20_Validation_001"
    for m in MODALITIES:
        _save(src / f"BraTS20_Validation_001_{m}.nii.gz", case.images[m], case.affine)
    [found] = discover_cases(tmp_path / "src")
    assert not found.labelled


def test_duplicate_case_ids_are_refused(tmp_path, case):
    for folder in ("a", "b"):
        _save(tmp_path / folder / "Case1" / "Case1_flair.nii.gz", case.images["flair"], case.affine)
    with pytest.raises(DataError, match="case id Case1 appears twice"):
        discover_cases(tmp_path)


def test_no_cases_names_the_layouts_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as err:
        discover_cases(tmp_path)
    assert "BraTS 2020/2021" in str(err.value) and "BraTS 2023" in str(err.value) and "Decathlon" in str(err.value)


def test_unreadable_source_file_is_kept_for_validation(tmp_path, case):
    src = tmp_path / "src" / "X-1"
    for new, old in {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "seg": "seg"}.items():
        data = case.seg if old == "seg" else case.images[old]
        _save(src / f"X-1-{new}.nii.gz", data, case.affine)
    good = (src / "X-1-t2f.nii.gz").read_bytes()
    (src / "X-1-t2f.nii.gz").write_bytes(good[: len(good) // 2])
    [found] = discover_cases(tmp_path / "src")
    write_canonical(found, tmp_path / "raw")
    flair = canonical_files(tmp_path / "raw" / "X-1")["flair"]
    assert flair is not None and flair.read_bytes() == good[: len(good) // 2]


def test_a_linked_folder_counts_as_a_link_too(tmp_path):
    (tmp_path / "src" / "real").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "src" / "alias").symlink_to(tmp_path / "src" / "real", target_is_directory=True)
    refuse_outside_links(tmp_path / "src")  # a link that stays inside is fine
    (tmp_path / "src" / "cases").symlink_to(tmp_path / "other", target_is_directory=True)
    with pytest.raises(DataError, match=r"src/cases is a symbolic link to .*other, outside the source folder"):
        refuse_outside_links(tmp_path / "src")
