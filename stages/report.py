"""DVC stage `report`: one self-contained HTML run report, reports/index.html (python -m stages.report)."""

from __future__ import annotations

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.errors import exit_on_user_error
from brats_seg.params_file import stage_params
from brats_seg.registry.params import PromoteParams


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    base, promote = load_section(BaseParams, params, "base"), load_section(PromoteParams, params, "promote")
    # torch and MLflow load only now, after the params are checked: a bad value is said in a second, not in four
    from brats_seg.runners.report import report_stage

    report_stage(base, promote)


if __name__ == "__main__":
    main()
