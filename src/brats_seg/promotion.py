"""The promotion gate: the challenger becomes champion only when it is better on the same test split."""

from __future__ import annotations

import dataclasses
import logging

from brats_seg import tracking
from brats_seg.errors import UserError

log = logging.getLogger(__name__)

METRIC_TAG = "test_wt_dice_mean"


@dataclasses.dataclass(frozen=True)
class PromoteParams:
    """params.yaml ``promote`` section."""

    min_improvement: float = 0.0
    min_dice: float = 0.7

    def __post_init__(self) -> None:
        from brats_seg.config import require_fraction

        require_fraction("promote.min_improvement", self.min_improvement)
        require_fraction("promote.min_dice", self.min_dice)


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_dice: float
    champion_dice: float | None
    champion_version: str | None


def decide(challenger: dict, champion: dict | None, params: PromoteParams, force: bool = False) -> Decision:
    """Compare two model versions (dicts from :func:`tracking.model_version`) by their test WT Dice."""
    dice = float(challenger["tags"].get(METRIC_TAG, "nan"))
    if champion is None:
        if dice >= params.min_dice or force:
            return Decision(True, f"no champion yet and test WT Dice {dice:.4f} >= floor {params.min_dice}"
                            if dice >= params.min_dice else "forced", dice, None, None)
        return Decision(False, f"test WT Dice {dice:.4f} is below the floor promote.min_dice={params.min_dice}",
                        dice, None, None)
    champ_dice = float(champion["tags"].get(METRIC_TAG, "nan"))
    if force:
        return Decision(True, "forced", dice, champ_dice, champion["version"])
    split, champ_split = challenger["tags"].get("split_digest"), champion["tags"].get("split_digest")
    if split != champ_split:
        return Decision(False, f"refused to compare: the challenger was tested on split {str(split)[:12]} and "
                        f"the champion on {str(champ_split)[:12]}; retrain both on one split or use --force",
                        dice, champ_dice, champion["version"])
    if dice < params.min_dice:
        return Decision(False, f"test WT Dice {dice:.4f} is below the floor {params.min_dice}", dice, champ_dice,
                        champion["version"])
    improvement = dice - champ_dice
    if not (improvement > 0 and improvement >= params.min_improvement):  # "higher by at least min_improvement"
        return Decision(False, f"test WT Dice {dice:.4f} does not beat champion v{champion['version']} "
                        f"({champ_dice:.4f}) by promote.min_improvement={params.min_improvement}", dice,
                        champ_dice, champion["version"])
    return Decision(True, f"test WT Dice {dice:.4f} beats champion v{champion['version']} ({champ_dice:.4f})",
                    dice, champ_dice, champion["version"])


def promote(model_name: str, params: PromoteParams, version: str | None = None, force: bool = False) -> dict:
    """Run the gate for ``version`` (default: the ``challenger`` alias); moves ``champion`` if it passes.

    The decision and its numbers are recorded as tags on the challenger's version and returned.
    """
    challenger = (tracking.model_version(model_name, version=version) if version
                  else tracking.model_version(model_name, alias="challenger"))
    if challenger is None:
        what = f"version {version}" if version else "'challenger' alias"
        raise UserError(f"model {model_name} has no {what} in the registry at {tracking.tracking_uri()}; "
                        f"run the pipeline (dvc repro register) first.")
    champion = tracking.model_version(model_name, alias="champion")
    if champion is not None and champion["version"] == challenger["version"]:
        decision = Decision(False, f"version {challenger['version']} is already the champion",
                            float(challenger["tags"].get(METRIC_TAG, "nan")), None, champion["version"])
    else:
        decision = decide(challenger, champion, params, force)
    if decision.promote:
        tracking.set_alias(model_name, "champion", challenger["version"])
    record = {"model": model_name, "version": challenger["version"], "promoted": decision.promote,
              "reason": decision.reason, "challenger_dice": decision.challenger_dice,
              "champion_dice": decision.champion_dice, "previous_champion": decision.champion_version}
    tracking.set_version_tags(model_name, challenger["version"], {
        "promotion_decision": "promoted" if decision.promote else "kept", "promotion_reason": decision.reason,
        "promotion_compared_with": decision.champion_version or "none"})
    log.info("promotion of %s v%s: %s (%s)", model_name, challenger["version"], record["promoted"], decision.reason)
    return record
