"""An ensemble of networks of one config, used as one network: it returns the logits of the members' mean
probability, so that thresholding at 0.5, test-time mirroring, post-processing and the ONNX export see one model."""

from __future__ import annotations

import torch
from torch import nn

from brats_seg.models.config import ModelConfig

EPS = 1e-6  # probabilities kept off 0 and 1, where the logit is infinite


class Ensemble(nn.Module):
    """``members`` (each built from ``config`` with ``members=1``) whose sigmoid probabilities are averaged; the
    output is ``log(p / (1 - p))`` of that average (float32), so ``sigmoid(output)`` is the average."""

    def __init__(self, config: ModelConfig, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) != config.members:
            raise ValueError(f"an ensemble of {config.members} members was given {len(members)} networks")
        self.config = config
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0).clamp(EPS, 1 - EPS)
        return torch.log(mean) - torch.log1p(-mean)
