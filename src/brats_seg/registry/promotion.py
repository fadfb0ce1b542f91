"""The promotion gate: the challenger becomes champion only when it is better on the same test patients.

The gate compares one metric, ``promote.metric`` (:mod:`brats_seg.registry.gate`; by default the mean lesion-wise
Dice of the model's regions, the WT Dice of a whole-tumour model), on the challenger's test patients
(:mod:`brats_seg.registry.comparison` says how the champion's number is found, or why it cannot be).

The decision is recorded as tags on the challenger's version: the decision and its reason, the metric, the
version it was compared with, the number of test patients, the test split's digest and both scores.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from brats_seg.base_params import BaseParams
from brats_seg.errors import DataError, UserError
from brats_seg.registry import gate, tracking, versions
from brats_seg.registry.audit import record_decision
from brats_seg.registry.comparison import Comparison, Refusal, compare, test_patients
from brats_seg.registry.params import PromoteParams

if TYPE_CHECKING:
    import pandas as pd


log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_dice: float
    champion_dice: float | None = None
    champion_version: str | None = None
    test_patients: int | None = None
    test_split: str | None = None
    champion_rescored: bool = False
    metric: str = "wt_dice"
    # the champion's per-case rows on those test patients, when it was re-scored (what the report compares)
    champion_cases: pd.DataFrame | None = dataclasses.field(default=None, compare=False, repr=False)


def judge(dice: float, champion: dict | None, comparison: Comparison | None, params: PromoteParams,
          name: str = "WT Dice", metric: str = "wt_dice") -> Decision:
    """The gate on numbers: the challenger's test metric (``name``, e.g. "WT Dice") must reach ``min_dice`` and,
    when there is a champion, be higher than the champion's (on the same test patients) by at least
    ``min_improvement``."""
    if champion is None or comparison is None:
        if dice >= params.min_dice:
            return Decision(True, f"no champion yet and test {name} {dice:.4f} >= floor {params.min_dice}", dice,
                            metric=metric)
        return Decision(False, f"test {name} {dice:.4f} is below the floor promote.min_dice={params.min_dice}", dice,
                        metric=metric)
    c = comparison
    same = dict(champion_dice=c.champion_dice, champion_version=champion["version"], test_patients=c.test_patients,
                test_split=c.test_split, champion_rescored=c.rescored, metric=metric, champion_cases=c.champion_cases)
    who = "test split" if c.test_patients is None else f"{c.test_patients} test patients"
    where = f" on the same {who} (split {str(c.test_split)[:12]}{', champion re-scored' if c.rescored else ''})"
    if dice < params.min_dice:
        return Decision(False, f"test {name} {dice:.4f} is below the floor {params.min_dice}", dice, **same)
    improvement = dice - c.champion_dice
    if not (improvement > 0 and improvement >= params.min_improvement):  # "higher by at least min_improvement"
        return Decision(False, f"test {name} {dice:.4f} does not beat champion v{champion['version']} "
                        f"({c.champion_dice:.4f}) by promote.min_improvement={params.min_improvement}{where}",
                        dice, **same)
    return Decision(True, f"test {name} {dice:.4f} beats champion v{champion['version']} ({c.champion_dice:.4f})"
                    f"{where}", dice, **same)


def decide(challenger: dict, champion: dict | None, params: PromoteParams, base: BaseParams,
           force: bool = False) -> Decision:
    """The whole gate for two versions (dicts from :func:`versions.model_version`)."""
    regions = gate.version_regions(challenger["tags"])
    metric = gate.resolve(params.metric, regions)
    name = gate.describe(metric, regions)
    dice = gate.from_tags(challenger["tags"], metric, regions)
    if force:
        champ_dice = None if champion is None else gate.from_tags(champion["tags"], metric, regions)
        return Decision(True, "forced", dice, champ_dice, None if champion is None else champion["version"],
                        metric=metric)
    lacking = gate.missing(metric, regions, regions)
    if lacking:
        return Decision(False, f"refused to compare: promote.metric={params.metric} needs "
                        f"{', '.join(r.upper() for r in lacking)}, which v{challenger['version']} does not segment; "
                        f"set promote.metric to auto or to a metric of its regions", dice, metric=metric)
    if champion is None:
        return dataclasses.replace(judge(dice, None, None, params, name, metric),
                                   test_patients=test_patients(challenger),
                                   test_split=challenger["tags"].get("split_digest"))
    try:
        comparison = compare(challenger, champion, base, metric)
    except Refusal as exc:
        return Decision(False, f"refused to compare: {exc}", dice, champion_version=champion["version"],
                        metric=metric)
    return judge(dice if comparison.challenger_dice is None else comparison.challenger_dice, champion, comparison,
                 params, name, metric)


@dataclasses.dataclass(frozen=True)
class Preview:
    """What the gate decides for ``challenger`` now, without moving an alias or writing a tag (the run report's
    view): ``decision`` is None when the version already is the champion; ``champion_cases`` are the champion's
    per-case rows on the challenger's test patients (re-scored, or as its run recorded them on the same split)."""

    challenger: dict
    champion: dict | None
    decision: Decision | None
    champion_cases: pd.DataFrame | None = None


def preview(challenger: dict, params: PromoteParams, base: BaseParams) -> Preview:
    """The gate for ``challenger`` (a dict from :func:`versions.model_version`) against the current champion, as
    :func:`promote` would decide it, with nothing recorded; a comparison that cannot be made is a decision to keep,
    with the reason."""
    champion = versions.model_version(challenger["name"], alias="champion")
    if champion is not None and champion["version"] == challenger["version"]:
        return Preview(challenger, champion, None)
    try:
        decision = decide(challenger, champion, params, base)
    except (DataError, UserError) as exc:
        regions = gate.version_regions(challenger["tags"])
        metric = gate.resolve(params.metric, regions)
        decision = Decision(False, f"could not be decided here: {exc}", gate.from_tags(challenger["tags"], metric,
                                                                                       regions), metric=metric)
    cases = decision.champion_cases
    if cases is None and champion is not None and decision.champion_dice is not None:
        cases = versions.run_table(champion["run_id"], "eval_cases.csv")  # recorded on the same test split
    return Preview(challenger, champion, decision, cases)


def promote(model_name: str, params: PromoteParams, version: str | None = None, force: bool = False,
            base: BaseParams | None = None) -> dict:
    """Run the gate for ``version`` (default: the ``challenger`` alias); moves ``champion`` if it passes.

    ``base`` locates the workspace's slices and raw data (needed when the champion must be re-scored). The
    decision and its numbers are recorded as tags on the challenger's version and returned.
    """
    challenger = (versions.model_version(model_name, version=version) if version
                  else versions.model_version(model_name, alias="challenger"))
    if challenger is None:
        what = f"version {version}" if version else "'challenger' alias"
        raise UserError(f"model {model_name} has no {what} in the registry at {tracking.tracking_uri()}; "
                        f"run the pipeline (dvc repro register) first.")
    champion = versions.model_version(model_name, alias="champion")
    if champion is not None and champion["version"] == challenger["version"]:
        return _already_champion(model_name, challenger)  # the decision that made it champion stays on record
    try:
        decision = decide(challenger, champion, params, base or BaseParams(), force)
    except DataError as exc:
        raise UserError(f"cannot re-score champion v{champion['version'] if champion else '?'}: {exc}") from None
    if decision.promote:
        versions.set_alias(model_name, "champion", challenger["version"])
    tags = decision_tags(decision)
    versions.set_version_tags(model_name, challenger["version"], tags)  # its latest decision
    record_decision(model_name, challenger["version"], tags, decision.promote, decision.reason)  # the trail
    log.info("promotion of %s v%s: %s (%s)", model_name, challenger["version"],
             "promoted to champion" if decision.promote else "kept as it is", decision.reason)
    return _record(model_name, challenger["version"], decision)


def _record(model_name: str, version: str, decision: Decision) -> dict:
    return {"model": model_name, "version": version, "promoted": decision.promote, "reason": decision.reason,
            "challenger_dice": decision.challenger_dice, "champion_dice": decision.champion_dice,
            "previous_champion": decision.champion_version, "test_patients": decision.test_patients,
            "test_split": decision.test_split, "champion_rescored": decision.champion_rescored,
            "metric": decision.metric}


def _already_champion(model_name: str, version: dict) -> dict:
    """Nothing to decide (a scheduled run with nothing new): the record of the decision that promoted it."""
    tags = version["tags"]

    def recorded(key: str) -> str | None:
        return None if tags.get(key, "none") in ("none", "unknown") else tags[key]

    dice, patients = recorded("promotion_champion_dice"), recorded("promotion_test_patients")
    score = tags.get("promotion_challenger_dice", tags.get("test_wt_dice_mean", "nan"))
    decision = Decision(False, f"version {version['version']} is already the champion", float(score),
                        None if dice is None else float(dice),
                        recorded("promotion_compared_with"), None if patients is None else int(patients),
                        recorded("promotion_test_split"), tags.get("promotion_champion_rescored") == "true",
                        tags.get("promotion_metric", "wt_dice"))
    return _record(model_name, version["version"], decision)


def decision_tags(decision: Decision) -> dict[str, str]:
    """The decision record on the challenger's version."""
    def number(value: float | None) -> str:
        return "none" if value is None else f"{value:.6f}"

    return {"promotion_decision": "promoted" if decision.promote else "kept", "promotion_reason": decision.reason,
            "promotion_metric": decision.metric,
            "promotion_compared_with": decision.champion_version or "none",
            "promotion_test_patients": "unknown" if decision.test_patients is None else str(decision.test_patients),
            "promotion_test_split": decision.test_split or "unknown",
            "promotion_challenger_dice": number(decision.challenger_dice),
            "promotion_champion_dice": number(decision.champion_dice),
            "promotion_champion_rescored": str(decision.champion_rescored).lower()}
