"""params.yaml ``evaluate``; torch-free, so that reading and checking params never imports torch."""

from __future__ import annotations

import dataclasses
from typing import Literal

from brats_seg.config import require, runtime_field
from brats_seg.evaluation.lesion_configs import CONFIGS


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """params.yaml ``evaluate`` section."""

    device: Literal["auto", "cpu", "cuda"] = runtime_field("auto")  # where it runs
    lesionwise: str = "gli"  # the official BraTS configuration of the lesion-wise metrics
    # test-time mirroring: chosen when the model is trained (post-processing is chosen with it) and stored in the
    # model file, so that evaluate, the promotion's re-score, predict and the registered ONNX graph all use it
    tta: bool = False

    def __post_init__(self) -> None:
        require("evaluate.lesionwise", self.lesionwise, self.lesionwise in CONFIGS,
                f"one of the official BraTS configurations: {', '.join(CONFIGS)}")
