"""DVC stage `evaluate`: per-patient metrics on the test split in the original grid (python -m stages.evaluate)."""

from __future__ import annotations

from brats_seg.config import BaseParams, load_section, stage_params
from brats_seg.errors import exit_on_user_error
from brats_seg.runs import evaluate_stage
from brats_seg.train import TrainParams


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    device = load_section(TrainParams, params, "train").device
    evaluate_stage(load_section(BaseParams, params, "base"), device=device)


if __name__ == "__main__":
    main()
