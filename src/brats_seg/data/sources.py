"""params.yaml ``download``: where the download stage reads BraTS from (synthetic cases, a local folder or archive, a
URL, a Kaggle dataset) and how; torch-free, so that reading and checking params never imports torch."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from brats_seg.config import (
    host_memory,
    require,
    require_at_least,
    require_fraction,
    require_match,
    require_positive,
    require_url,
    runtime_field,
)
from brats_seg.errors import DataError

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)  # BraTS geometry: 1 mm, 240 x 240 x 155
MSD_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar"
MSD_MD5 = "240a19d752f0d9e9101544901065d872"


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
    n_cases: int = 24
    shape: tuple[int, int, int] = BRATS_SHAPE
    tumour_free_fraction: float = 0.1

    def __post_init__(self) -> None:
        require_at_least("download.synthetic.n_cases", self.n_cases, 1)
        require("download.synthetic.shape", list(self.shape), min(self.shape) >= 8, "three integers >= 8")
        case_bytes = 4 * 5 * math.prod(self.shape)  # four float32 modalities and the labels, in memory at once
        require("download.synthetic.shape", list(self.shape), case_bytes <= host_memory() / 4, f"a volume whose "
                f"case fits a quarter of this host's memory ({host_memory() / 1e9:.1f} GB; one case of this shape "
                f"takes {case_bytes / 1e9:,.1f} GB), e.g. 240 x 240 x 155 as BraTS")
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
        require_match("download.kaggle.dataset", self.dataset, r"[\w.-]+/[\w.-]+", "OWNER/NAME as in the "
                      "dataset's Kaggle URL")
        require_url("download.kaggle.api_url", self.api_url)
        require_at_least("download.kaggle.retries", self.retries, 0)
        require_positive("download.kaggle.timeout_s", self.timeout_s)


@dataclasses.dataclass(frozen=True)
class DownloadParams:
    """params.yaml ``download`` section."""

    source: Literal["synthetic", "local", "url", "kaggle"] = "synthetic"
    workers: int = runtime_field(0)
    synthetic: SyntheticSource = SyntheticSource()
    local: LocalSource = LocalSource()
    url: UrlSource = UrlSource()
    kaggle: KaggleSource = KaggleSource()

    def __post_init__(self) -> None:
        require_at_least("download.workers", self.workers, 0)


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
