"""params.yaml ``register`` and ``promote``: the registered model's name and alias, and the promotion gate's
rule; torch- and MLflow-free, so that reading and checking params imports neither."""

from __future__ import annotations

import dataclasses

from brats_seg.config import require, require_fraction, require_match
from brats_seg.registry import gate

# Aliases registration may not set: `champion` belongs to the promotion gate, `latest` is MLflow's own.
PROTECTED_ALIASES = ("champion", "latest")


@dataclasses.dataclass(frozen=True)
class RegisterParams:
    """params.yaml ``register`` section."""

    model_name: str = "brats-unet"
    alias: str = "challenger"

    def __post_init__(self) -> None:
        require_match("register.model_name", self.model_name, r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
                      "a registry name of letters, digits, '.', '_' and '-' (no '/', at most 128 characters)")
        require_match("register.alias", self.alias, r"[A-Za-z_][A-Za-z0-9_-]{0,254}",
                      "an alias of letters, digits, '_' and '-' that starts with a letter")
        require("register.alias", self.alias, self.alias.lower() not in PROTECTED_ALIASES,
                "another alias than champion (the promotion gate alone moves it: brats-seg promote) and latest")


@dataclasses.dataclass(frozen=True)
class PromoteParams:
    """params.yaml ``promote`` section."""

    min_improvement: float = 0.0
    min_dice: float = 0.7
    metric: str = gate.AUTO

    def __post_init__(self) -> None:
        require_fraction("promote.min_improvement", self.min_improvement)
        require_fraction("promote.min_dice", self.min_dice)
        require("promote.metric", self.metric, self.metric in gate.METRICS, f"one of {', '.join(gate.METRICS)}")
