"""DVC stage `source`: record what the data source holds, so that download reruns only when it changed
(python -m stages.source)."""

from __future__ import annotations

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.data.source_manifest import check_source
from brats_seg.data.sources import DownloadParams
from brats_seg.errors import exit_on_user_error
from brats_seg.orchestration.outputs import check_output_folders
from brats_seg.params_file import stage_params
from brats_seg.sections import check_params


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    # first in every dvc repro: a mistyped or wrong value in any section is said even where no stage it belongs to
    # reruns (DVC tracks the keys each stage reads, not the keys a user adds), and before dvc deletes any output a
    # user's folder sits at
    check_params(params)
    base = load_section(BaseParams, params, "base")
    check_output_folders(".", params)
    check_source(load_section(DownloadParams, params, "download"), base.source_manifest, base.raw_dir,
                 base.cache_dir, base.seed)


if __name__ == "__main__":
    main()
