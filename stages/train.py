"""DVC stage `train`: train the U-Net on the slices, tracked in MLflow (python -m stages.train).

With ``train.nproc`` > 1 it starts itself again as that many processes under torchrun on this host; under
torchrun already (``torchrun --nproc-per-node N -m stages.train``) it trains as one of them.
"""

from __future__ import annotations

import sys

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section
from brats_seg.errors import exit_on_user_error
from brats_seg.evaluation.params import EvaluateParams
from brats_seg.params_file import stage_params
from brats_seg.training.params import TrainParams


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    params = stage_params(__doc__, argv)
    train = load_section(TrainParams, params, "train")
    base, evaluate = load_section(BaseParams, params, "base"), load_section(EvaluateParams, params, "evaluate")
    # torch and MLflow load only now, after the params are checked: a bad value is said in a second, not in four
    from brats_seg.runners.train import train_stage
    from brats_seg.training.distributed import launch, launched

    if train.nproc > 1 and not launched():
        sys.exit(launch("stages.train", train.nproc, sys.argv[1:] if argv is None else argv))
    train_stage(train, base, evaluate)


if __name__ == "__main__":
    main()
