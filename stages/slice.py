"""DVC stage `slice`: validated cases -> 2D slice shards, index and geometry (python -m stages.slice)."""

from __future__ import annotations

import os

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.data.slicing import run_slice
from brats_seg.data.spec import SliceParams
from brats_seg.data.validation import read_manifest
from brats_seg.errors import exit_on_user_error
from brats_seg.orchestration.executors import choose_executor
from brats_seg.params_file import stage_params


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    base = load_section(BaseParams, params, "base")
    run_slice(load_section(SliceParams, params, "slice"), base.raw_dir, read_manifest(base.manifest),
              base.slices_dir, base.seed, choose_executor(base.executor, base.dask_address, os.environ))


if __name__ == "__main__":
    main()
