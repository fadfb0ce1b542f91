"""DVC stage `evaluate`: per-patient metrics on the test split in the original grid (python -m stages.evaluate)."""

from __future__ import annotations

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.errors import exit_on_user_error
from brats_seg.evaluation.params import EvaluateParams
from brats_seg.params_file import stage_params


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    evaluate, base = load_section(EvaluateParams, params, "evaluate"), load_section(BaseParams, params, "base")
    # torch and MLflow load only now, after the params are checked: a bad value is said in a second, not in four
    from brats_seg.runners.evaluate import evaluate_stage

    evaluate_stage(evaluate, base)


if __name__ == "__main__":
    main()
