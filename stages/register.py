"""DVC stage `register`: log the model to MLflow and register a new `challenger` version (python -m stages.register)."""

from __future__ import annotations

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.errors import exit_on_user_error
from brats_seg.params_file import stage_params
from brats_seg.registry.params import RegisterParams


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    register, base = load_section(RegisterParams, params, "register"), load_section(BaseParams, params, "base")
    # torch and MLflow load only now, after the params are checked: a bad value is said in a second, not in four
    from brats_seg.runners.register import register_stage

    register_stage(register, base)


if __name__ == "__main__":
    main()
