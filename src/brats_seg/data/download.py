"""The download stage: fetch BraTS-format data from a source and write the canonical layout.

Sources: ``synthetic`` (the default, generated here), ``local`` (a folder or archive), ``url`` (an HTTP(S)
archive, by default the Medical Segmentation Decathlon Task01) and ``kaggle`` (a Kaggle dataset).

Cases are staged under ``<cache_dir>/raw-<key>/``, where the key hashes the parameters, and that folder
is renamed to the raw directory at the end. An interrupted run therefore resumes: cases already staged are
kept, the archive download continues from its partial file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from brats_seg.data import synthetic
from brats_seg.data.fetch import fetch_url, kaggle_credentials
from brats_seg.data.layouts import (
    UNLABELLED_DIR,
    CaseSource,
    canonical_dir,
    discover_cases,
    file_sha256,
    refuse_outside_links,
    write_canonical,
    write_case,
)
from brats_seg.errors import DataError
from brats_seg.io.archives import extract_archive, is_archive
from brats_seg.pool import run_parallel

log = logging.getLogger(__name__)

MSD_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar"
MSD_MD5 = "240a19d752f0d9e9101544901065d872"


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
    n_cases: int = 24
    shape: tuple[int, int, int] = synthetic.BRATS_SHAPE
    tumour_free_fraction: float = 0.1

    def __post_init__(self) -> None:
        from brats_seg.config import require, require_at_least, require_fraction

        require_at_least("download.synthetic.n_cases", self.n_cases, 1)
        require("download.synthetic.shape", list(self.shape), min(self.shape) >= 8, "three integers >= 8")
        require_fraction("download.synthetic.tumour_free_fraction", self.tumour_free_fraction)


@dataclasses.dataclass(frozen=True)
class LocalSource:
    path: str = ""


@dataclasses.dataclass(frozen=True)
class UrlSource:
    url: str = MSD_URL
    md5: str | None = MSD_MD5
    retries: int = 5
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        from brats_seg.config import require_at_least, require_match, require_positive, require_url

        require_url("download.url.url", self.url)
        if self.md5 is not None:
            require_match("download.url.md5", self.md5, "[0-9a-fA-F]{32}", "32 hexadecimal digits, or null to skip "
                          "the check")
        require_at_least("download.url.retries", self.retries, 0)
        require_positive("download.url.timeout_s", self.timeout_s)


@dataclasses.dataclass(frozen=True)
class KaggleSource:
    dataset: str = "awsaf49/brats20-dataset-training-validation"
    api_url: str = "https://www.kaggle.com/api/v1"
    retries: int = 5
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        from brats_seg.config import require_at_least, require_match, require_positive, require_url

        require_match("download.kaggle.dataset", self.dataset, r"[\w.-]+/[\w.-]+", "OWNER/NAME as in the "
                      "dataset's Kaggle URL")
        require_url("download.kaggle.api_url", self.api_url)
        require_at_least("download.kaggle.retries", self.retries, 0)
        require_positive("download.kaggle.timeout_s", self.timeout_s)


@dataclasses.dataclass(frozen=True)
class DownloadParams:
    """params.yaml ``download`` section."""

    source: Literal["synthetic", "local", "url", "kaggle"] = "synthetic"
    workers: int = 0
    synthetic: SyntheticSource = SyntheticSource()
    local: LocalSource = LocalSource()
    url: UrlSource = UrlSource()
    kaggle: KaggleSource = KaggleSource()

    def __post_init__(self) -> None:
        from brats_seg.config import require_at_least

        require_at_least("download.workers", self.workers, 0)


def run_download(params: DownloadParams, raw_dir: str | Path, cache_dir: str | Path, seed: int) -> dict:
    """Fill ``raw_dir`` with canonical cases from ``params.source``; returns the sources.json record."""
    raw_dir, cache_dir = Path(raw_dir), Path(cache_dir)
    local = local_source_path(params.local.path, raw_dir, cache_dir) if params.source == "local" else None
    used = getattr(params, params.source)
    key = hashlib.sha256(json.dumps([params.source, dataclasses.asdict(used), seed], sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    staging = cache_dir / f"raw-{key}"
    staging.mkdir(parents=True, exist_ok=True)
    if params.source == "synthetic":
        record = _synthetic(used, staging, seed, params.workers)
    else:
        record = _from_files(params, staging, cache_dir, local)
    record = {"source": params.source, "params": dataclasses.asdict(used), "seed": seed, **record}
    (staging / "sources.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, raw_dir)
    log.info("download: %d labelled and %d unlabelled cases in %s", record["n_cases"],
             record["n_unlabelled"], raw_dir)
    return record


def _synthetic(src: SyntheticSource, staging: Path, seed: int, workers: int) -> dict:
    if src.n_cases < 1:
        raise DataError(f"download.synthetic.n_cases must be at least 1, got {src.n_cases}.")
    if min(src.shape) < 8:
        raise DataError(f"download.synthetic.shape must be at least 8 voxels per axis, got {list(src.shape)}.")
    tumour_free = synthetic.tumour_free_indices(src.n_cases, src.tumour_free_fraction, seed)
    todo = [i for i in range(1, src.n_cases + 1) if not (staging / synthetic.case_id_for(i)).is_dir()]
    if len(todo) < src.n_cases:
        log.info("resuming: %d of %d synthetic cases already staged", src.n_cases - len(todo), src.n_cases)
    job = functools.partial(_make_and_write, root=staging, seed=seed, shape=src.shape, tumour_free=tumour_free)
    run_parallel(job, todo, workers, desc="synthetic cases")
    cases = {}
    for i in range(1, src.n_cases + 1):
        case_id = synthetic.case_id_for(i)
        files = {p.name: file_sha256(p) for p in sorted((staging / case_id).iterdir())}
        cases[case_id] = {"labelled": True, "convention": "brats2020", "tumour": i not in tumour_free,
                          "origin": "synthetic", "files": files}
    return {"cases": cases, "n_cases": len(cases), "n_unlabelled": 0}


def _make_and_write(index: int, root: Path, seed: int, shape: tuple[int, int, int], tumour_free: set[int]) -> str:
    case = synthetic.make_case(index, seed, shape, tumour=index not in tumour_free)
    write_case(root, case.case_id, case.images, case.seg, case.affine)
    return case.case_id


def _from_files(params: DownloadParams, staging: Path, cache_dir: Path, local: Path | None) -> dict:
    source_root, fetched = _materialise(params, cache_dir, local)
    cases = discover_cases(source_root)
    todo = [c for c in cases if not canonical_dir(staging, c).is_dir()]
    if len(todo) < len(cases):
        log.info("resuming: %d of %d cases already staged", len(cases) - len(todo), len(cases))
    run_parallel(functools.partial(write_canonical, root=staging), todo, params.workers, desc="normalise cases")
    record = {"fetched": fetched, "cases": {c.case_id: _case_record(c, staging, source_root) for c in cases}}
    if source_root.is_relative_to(cache_dir / "extracted"):  # the archive stays for reruns; its copy goes
        shutil.rmtree(source_root, ignore_errors=True)
    record["n_cases"] = sum(c.labelled for c in cases)
    record["n_unlabelled"] = sum(not c.labelled for c in cases)
    if record["n_unlabelled"]:
        log.info("%d case(s) have no label map; kept apart in %s/ (they cannot be trained on)",
                 record["n_unlabelled"], UNLABELLED_DIR)
    return record


def _case_record(case: CaseSource, staging: Path, source_root: Path) -> dict:
    folder = canonical_dir(staging, case)
    return {"labelled": case.labelled, "convention": case.convention,
            "origin": [str(p.relative_to(source_root)) for p in case.paths()],
            "files": {p.name: file_sha256(p) for p in sorted(folder.iterdir())}}


def local_source_path(path: str, raw_dir: str | Path, cache_dir: str | Path) -> Path:
    """``download.local.path``, checked: it must exist and must neither lie inside nor contain the folders
    that the pipeline deletes and rewrites (``raw_dir``, ``cache_dir``). Raises DataError otherwise."""
    source = Path(path).expanduser()
    if not path or not source.exists():
        raise DataError(f"download.local.path {path!r} does not exist; point it at a folder of BraTS cases or an "
                        f"archive of them.")
    resolved = source.resolve()
    for key, folder in (("base.raw_dir", Path(raw_dir).resolve()), ("base.cache_dir", Path(cache_dir).resolve())):
        if resolved.is_relative_to(folder):
            raise DataError(f"download.local.path {path} lies inside {key} ({folder}), which the pipeline deletes "
                            f"and rewrites; move the source cases out of it and point download.local.path there.")
        if folder.is_relative_to(resolved):
            raise DataError(f"download.local.path {path} contains {key} ({folder}), the pipeline's own data; point "
                            f"download.local.path at the folder (or archive) of source cases itself.")
    return source


def _materialise(params: DownloadParams, cache_dir: Path, local: Path | None) -> tuple[Path, dict]:
    """Return a folder holding the source's files, fetching and extracting as needed."""
    if local is not None:
        path = local
        if path.is_dir():
            refuse_outside_links(path)
            return path, {"path": str(path)}
        if not is_archive(path):
            raise DataError(f"download.local.path {path} is neither a folder nor an archive "
                            f"(.zip, .tar, .tar.gz); point it at one of those.")
        archive = path
        fetched = {"path": str(path), "sha256": file_sha256(path)}
    elif params.source == "url":
        name = params.url.url.rstrip("/").rsplit("/", 1)[-1] or "download"
        archive = fetch_url(params.url.url, cache_dir / "downloads" / name, md5=params.url.md5,
                            retries=params.url.retries, timeout_s=params.url.timeout_s)
        fetched = {"url": params.url.url, "md5": params.url.md5, "sha256": file_sha256(archive)}
    else:
        auth = kaggle_credentials()
        url = f"{params.kaggle.api_url.rstrip('/')}/datasets/download/{params.kaggle.dataset}"
        name = params.kaggle.dataset.replace("/", "__") + ".zip"
        archive = fetch_url(url, cache_dir / "downloads" / name, retries=params.kaggle.retries,
                            timeout_s=params.kaggle.timeout_s, auth=auth)
        fetched = {"kaggle": params.kaggle.dataset, "sha256": file_sha256(archive)}
    extracted = cache_dir / "extracted" / f"{archive.name}-{fetched['sha256'][:12]}"
    if not extracted.is_dir():
        extract_archive(archive, extracted)
    return extracted, fetched
