"""DVC stage `download`: fetch BraTS-format cases into the canonical layout (python -m stages.download)."""

from __future__ import annotations

import os

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.data.download import run_download
from brats_seg.data.sources import DownloadParams
from brats_seg.errors import exit_on_user_error
from brats_seg.orchestration.executors import choose_executor
from brats_seg.params_file import stage_params


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    base = load_section(BaseParams, params, "base")
    run_download(load_section(DownloadParams, params, "download"), base.raw_dir, base.cache_dir, base.seed,
                 choose_executor(base.executor, base.dask_address, os.environ))


if __name__ == "__main__":
    main()
