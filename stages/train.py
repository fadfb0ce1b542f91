"""DVC stage `train`: train the U-Net on the slices, tracked in MLflow (python -m stages.train)."""

from __future__ import annotations

from brats_seg.config import BaseParams, load_section, stage_params
from brats_seg.errors import exit_on_user_error
from brats_seg.runners.train import train_stage
from brats_seg.train import TrainParams


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    train_stage(load_section(TrainParams, params, "train"), load_section(BaseParams, params, "base"))


if __name__ == "__main__":
    main()
