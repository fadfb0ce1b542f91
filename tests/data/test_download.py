from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile

import pytest

from brats_seg.data.download import run_download
from brats_seg.data.layouts import canonical_files, list_canonical_cases
from brats_seg.data.sources import DownloadParams, KaggleSource, LocalSource, SyntheticSource, UrlSource
from brats_seg.errors import DataError, DownloadError, UserError
from tests.support.cohorts import TINY_SHAPE, write_synthetic_cohort


@pytest.fixture
def cohort_tar(tmp_path):
    """A BraTS-2020-style training folder of 3 tiny cases, packed as a .tar like the public archives."""
    src = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_synthetic_cohort(src, 3)
    tar = tmp_path / "brats.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname=src.name)
    return tar


def _check_raw(raw, n):
    cases = list_canonical_cases(raw)
    assert len(cases) == n
    for case in cases:
        assert all(p is not None for p in canonical_files(case).values())
    record = json.loads((raw / "sources.json").read_text())
    assert record["n_cases"] == n and len(record["cases"]) == n
    some = cases[0]
    sha = hashlib.sha256((some / f"{some.name}_flair.nii.gz").read_bytes()).hexdigest()
    assert record["cases"][some.name]["files"][f"{some.name}_flair.nii.gz"] == sha
    return record


def test_synthetic_source(tmp_path):
    synthetic = SyntheticSource(n_cases=3, shape=TINY_SHAPE, tumour_free_fraction=0.34)
    params = DownloadParams(workers=1, synthetic=synthetic)
    record = run_download(params, tmp_path / "raw", tmp_path / "cache", seed=1)
    _check_raw(tmp_path / "raw", 3)
    assert sum(not c["tumour"] for c in record["cases"].values()) == 1


class Interrupted(BaseException):
    """Stands for the process being stopped (Ctrl-C, a killed job) in the middle of a run."""


def test_interrupted_synthetic_run_resumes_from_staged_cases(tmp_path, monkeypatch):
    params = DownloadParams(workers=1, synthetic=SyntheticSource(n_cases=3, shape=TINY_SHAPE))
    from brats_seg.data import download

    made, interrupted = [], []
    real = download._make_and_write

    def flaky(index, **kw):
        if index == 3 and not interrupted:
            interrupted.append(index)
            raise Interrupted  # the first run is interrupted after two cases
        made.append(index)
        return real(index, **kw)

    monkeypatch.setattr(download, "_make_and_write", flaky)
    with pytest.raises(Interrupted):
        run_download(params, tmp_path / "raw", tmp_path / "cache", seed=1)
    made.clear()
    run_download(params, tmp_path / "raw", tmp_path / "cache", seed=1)
    assert made == [3]  # only the missing case was generated again
    _check_raw(tmp_path / "raw", 3)


def test_local_folder_and_archive(tmp_path, cohort_tar):
    folder = tmp_path / "MICCAI_BraTS2020_TrainingData"
    run_download(DownloadParams(source="local", workers=1, local=LocalSource(str(folder))), tmp_path / "raw1",
                 tmp_path / "cache", seed=0)
    _check_raw(tmp_path / "raw1", 3)
    zipped = tmp_path / "brats.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in folder.rglob("*.nii.gz"):
            zf.write(p, p.relative_to(tmp_path))
    for archive, out in ((cohort_tar, "raw2"), (zipped, "raw3")):
        params = DownloadParams(source="local", workers=1, local=LocalSource(str(archive)))
        record = run_download(params, tmp_path / out, tmp_path / "cache", seed=0)
        _check_raw(tmp_path / out, 3)
        assert list((tmp_path / "cache" / "extracted").iterdir()) == []  # no second copy of the data left
        assert record["fetched"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_local_path_that_does_not_exist(tmp_path):
    params = DownloadParams(source="local", local=LocalSource(str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="download.local.path .* does not exist"):
        run_download(params, tmp_path / "raw", tmp_path / "cache", seed=0)


def test_url_source_against_a_local_server_with_a_broken_transfer(tmp_path, cohort_tar, file_server):
    body = cohort_tar.read_bytes()
    file_server.files["/Task.tar"] = body
    file_server.cut_first["/Task.tar"] = 1
    url = UrlSource(url=file_server.url("/Task.tar"), md5=hashlib.md5(body).hexdigest(), retries=2)  # noqa: S324
    record = run_download(DownloadParams(source="url", workers=1, url=url), tmp_path / "raw", tmp_path / "cache", 0)
    _check_raw(tmp_path / "raw", 3)
    assert record["fetched"]["url"] == url.url
    assert file_server.requests[1]["range"] is not None  # resumed, not restarted


def test_url_checksum_mismatch_leaves_no_raw_data(tmp_path, cohort_tar, file_server):
    file_server.files["/Task.tar"] = cohort_tar.read_bytes()
    url = UrlSource(url=file_server.url("/Task.tar"), md5="f" * 32, retries=0)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        run_download(DownloadParams(source="url", url=url), tmp_path / "raw", tmp_path / "cache", 0)
    assert not (tmp_path / "raw").exists()


def test_kaggle_without_credentials_makes_no_request(tmp_path, monkeypatch, file_server):
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    params = DownloadParams(source="kaggle", kaggle=KaggleSource(api_url=file_server.url("/api/v1")))
    with pytest.raises(DownloadError, match="Kaggle credentials are missing"):
        run_download(params, tmp_path / "raw", tmp_path / "cache", 0)
    assert file_server.requests == []


def test_kaggle_downloads_the_dataset_zip_with_basic_auth(tmp_path, monkeypatch, file_server):
    src = tmp_path / "BraTS2020_TrainingData"
    write_synthetic_cohort(src, 2)
    zipped = tmp_path / "k.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in src.rglob("*.nii.gz"):
            zf.write(p, p.relative_to(tmp_path))
    file_server.files["/api/v1/datasets/download/owner/brats"] = zipped.read_bytes()
    file_server.auth = ("alice", "s3cret")
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret")
    params = DownloadParams(source="kaggle", workers=1,
                            kaggle=KaggleSource(dataset="owner/brats", api_url=file_server.url("/api/v1")))
    run_download(params, tmp_path / "raw", tmp_path / "cache", 0)
    _check_raw(tmp_path / "raw", 2)


def _link_case(src_case, dest_case):
    dest_case.mkdir()
    for f in sorted(src_case.iterdir()):
        (dest_case / f.name.replace(src_case.name, dest_case.name)).symlink_to(f)


def test_links_inside_the_source_folder_are_read_but_links_outside_it_or_broken_are_refused(tmp_path):
    src, elsewhere = tmp_path / "incoming", tmp_path / "elsewhere"
    write_synthetic_cohort(src, 2)
    write_synthetic_cohort(elsewhere, 1)
    _link_case(src / "BraTS20_Synthetic_001", src / "Linked_001")  # validation flags it as a duplicate
    run_download(DownloadParams(source="local", workers=1, local=LocalSource(str(src))), tmp_path / "raw",
                 tmp_path / "cache", seed=0)
    _check_raw(tmp_path / "raw", 3)
    _link_case(elsewhere / "BraTS20_Synthetic_001", src / "Outside_001")
    params = DownloadParams(source="local", workers=1, local=LocalSource(str(src)))
    with pytest.raises(DataError, match=r"Outside_001_flair.nii.gz is a symbolic link to .*elsewhere.*, outside the "
                                        r"source folder"):
        run_download(params, tmp_path / "raw2", tmp_path / "cache", seed=0)
    assert not (tmp_path / "raw2").exists()
    for f in (src / "Outside_001").iterdir():
        f.unlink()
    (src / "Outside_001" / "Outside_001_flair.nii.gz").symlink_to(src / "nothing.nii.gz")
    with pytest.raises(DataError, match="Outside_001_flair.nii.gz is a broken symbolic link"):
        run_download(params, tmp_path / "raw2", tmp_path / "cache", seed=0)


def test_a_rerun_replaces_its_own_raw_dir_but_never_a_users_folder(tmp_path):
    params = DownloadParams(workers=1, synthetic=SyntheticSource(n_cases=1, shape=TINY_SHAPE))
    run_download(params, tmp_path / "raw", tmp_path / "cache", seed=1)
    assert (tmp_path / "raw" / ".brats-seg-output").is_file()
    (tmp_path / "raw" / "stale.txt").write_text("from an older run")
    run_download(params, tmp_path / "raw", tmp_path / "cache", seed=1)  # its own output: replaced whole
    assert not (tmp_path / "raw" / "stale.txt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match=r"base.raw_dir .*mine is an existing folder that brats-seg did not create"):
        run_download(params, mine, tmp_path / "cache", seed=1)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"
