"""The promotion gate: the challenger becomes champion only when it is better on the same test patients.

The gate compares one metric, ``promote.metric`` (:mod:`brats_seg.gate`; by default the mean lesion-wise Dice of
the model's regions, the WT Dice of a whole-tumour model). When both versions were tested on one split, with the
same images, labels and scoring code, their recorded numbers are compared. When the challenger was tested on
another split (new data arrived), the champion is re-scored on the challenger's test patients, from the
workspace's raw data, with the preprocessing stored with the champion and the evaluate stage's metric code
(:mod:`brats_seg.rescore`), and those two numbers are compared. That comparison is refused only when the champion
cannot be loaded, or was trained or validated on any of those patients (or its run recorded no split tables, so
that this cannot be checked), or does not segment the regions the metric needs.

The decision is recorded as tags on the challenger's version: the decision and its reason, the metric, the
version it was compared with, the number of test patients, the test split's digest and both scores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import TYPE_CHECKING

from brats_seg import gate, tracking
from brats_seg.audit import record_decision
from brats_seg.config import BaseParams
from brats_seg.errors import DataError, UserError
from brats_seg.provenance import PREPROCESS_CODE, code_manifest, eval_code_digest

if TYPE_CHECKING:
    import pandas as pd

    from brats_seg import rescore
    from brats_seg.inference import ModelBundle

log = logging.getLogger(__name__)

TRAINED_ON = ("train", "val")


@dataclasses.dataclass(frozen=True)
class PromoteParams:
    """params.yaml ``promote`` section."""

    min_improvement: float = 0.0
    min_dice: float = 0.7
    metric: str = gate.AUTO

    def __post_init__(self) -> None:
        from brats_seg.config import require, require_fraction

        require_fraction("promote.min_improvement", self.min_improvement)
        require_fraction("promote.min_dice", self.min_dice)
        require("promote.metric", self.metric, self.metric in gate.METRICS, f"one of {', '.join(gate.METRICS)}")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The champion's gate metric on the challenger's test patients, and which patients those are; the
    challenger's own score when it had to be scored again too (its recorded one was made by other code)."""

    champion_dice: float
    test_patients: int | None
    test_split: str | None
    rescored: bool
    challenger_dice: float | None = None
    champion_cases: pd.DataFrame | None = dataclasses.field(default=None, compare=False, repr=False)


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


class Refusal(Exception):
    """The two versions cannot be compared fairly; the message says why."""


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


# Tags that make two recorded test scores comparable: the same test case ids, the same images and labels under
# them, the same scoring code (written by the evaluate stage, copied to the version by register); for a lesion-wise
# metric, the same official configuration too.
SAME_TEST = ("split_digest", "test_content_digest", "eval_code_digest")
SAME_LESION_RULES = ("lesionwise_config",)


def compare(challenger: dict, champion: dict, base: BaseParams, metric: str) -> Comparison:
    """Both versions on one set of test cases: the recorded scores when they were made on the same cases, images,
    labels and scoring code (:data:`SAME_TEST`), else the champion re-scored on the challenger's test patients in
    the workspace (and the challenger too when its score was made by other scoring code). Raises Refusal when
    that cannot be done fairly, UserError when the workspace does not hold the challenger's test cases.
    ``metric`` is the gate metric resolved for the challenger's regions."""
    split, regions = challenger["tags"].get("split_digest"), gate.version_regions(challenger["tags"])
    lacking = gate.missing(metric, regions, gate.version_regions(champion["tags"]))
    if lacking:
        raise Refusal(f"champion v{champion['version']} does not segment {', '.join(r.upper() for r in lacking)}, so "
                      f"the {gate.describe(metric, regions)} of the two cannot be compared; set promote.metric to a "
                      f"metric of the regions both segment (e.g. wt_dice or wt_lesion_dice), or promote with --force")
    recorded = gate.from_tags(champion["tags"], metric, regions)
    same = SAME_TEST + (SAME_LESION_RULES if any(kind != "dice" for _, kind in gate.parts(metric, regions)) else ())
    if not math.isnan(recorded) and all(challenger["tags"].get(k) is not None
                                        and challenger["tags"].get(k) == champion["tags"].get(k) for k in same):
        return Comparison(recorded, _test_patients(challenger), split, False)
    from brats_seg import rescore

    workspace = rescore.workspace_split(base.slices_dir)
    _require_challengers_test_cases(challenger, workspace, base.slices_dir)
    tests = workspace.cases
    _refuse_if_seen(champion, tests)
    _refuse_if_preprocessed_otherwise(champion)
    config = challenger["tags"].get("lesionwise_config", "gli")
    frame = rescore.score_model(_load(champion), base.raw_dir, tests["case_id"].tolist(), config)
    dice = gate.from_frame(frame, metric, regions)
    name = gate.describe(metric, regions)
    log.info("champion v%s re-scored on %d test patients of split %s: %s %.4f", champion["version"],
             tests["patient_id"].nunique(), workspace.digest[:12], name, dice)
    own = None
    if challenger["tags"].get("eval_code_digest") != eval_code_digest() or math.isnan(
            gate.from_tags(challenger["tags"], metric, regions)):
        own = gate.from_frame(rescore.score_model(_load(challenger), base.raw_dir, tests["case_id"].tolist(), config),
                              metric, regions)
        log.info("challenger v%s was scored by other evaluation code than this workspace's: re-scored, %s %.4f",
                 challenger["version"], name, own)
    return Comparison(dice, int(tests["patient_id"].nunique()), workspace.digest, True, own, frame)


def _require_challengers_test_cases(challenger: dict, workspace: rescore.WorkspaceSplit, slices_dir: str) -> None:
    """The workspace's test split is the one the challenger was tested on: the same case ids, and the same images
    and labels where the challenger recorded them."""
    split, content = challenger["tags"].get("split_digest"), challenger["tags"].get("test_content_digest")
    where = ("run the promotion in the workspace that produced it (or `git checkout` its commit and "
             "`dvc checkout`).")
    if workspace.digest != split:
        raise UserError(f"the workspace's slices ({slices_dir}, split {workspace.digest[:12]}) are not the split that "
                        f"challenger v{challenger['version']} was tested on ({str(split)[:12]}); {where}")
    if content not in (None, "unknown") and workspace.content != content:
        raise UserError(f"the workspace's test cases hold other images or labels (content "
                        f"{str(workspace.content)[:12]}) than those challenger v{challenger['version']} was tested on "
                        f"({content[:12]}); {where}")


def _test_patients(version: dict) -> int | None:
    table = tracking.split_tables(version["run_id"])
    return None if table is None else int(table.loc[table["split"] == "test", "patient_id"].nunique())


def _refuse_if_seen(champion: dict, tests: pd.DataFrame) -> None:
    """Refuse when the champion's run trained or validated on any of the test cases ``tests`` (columns case_id,
    patient_id, image_sha256): the same patient, or the same images under another id (a renamed copy); or when
    it recorded no splits, so that this cannot be checked."""
    table = tracking.split_tables(champion["run_id"])
    if table is None:
        raise Refusal(f"champion v{champion['version']}'s training run recorded no split tables, so whether it "
                      f"saw the challenger's test patients cannot be checked; retrain it, or promote with --force")
    trained = table[table["split"].isin(TRAINED_ON)]
    patients = sorted(set(tests["patient_id"]))
    seen = sorted(set(trained.loc[trained["patient_id"].isin(patients), "patient_id"]))
    if seen:
        named = ", ".join(seen[:20]) + (f" and {len(seen) - 20} more" if len(seen) > 20 else "")
        raise Refusal(f"champion v{champion['version']} was trained or validated on {len(seen)} of the challenger's "
                      f"{len(patients)} test patients ({named}), so it cannot be scored fairly on them; keep the "
                      f"champion, or promote with --force")
    known = dict(zip(trained["image_sha256"], trained["case_id"]))
    copies = [f"{case} (the images of {known[image]})"
              for case, image in zip(tests["case_id"], tests["image_sha256"]) if image and image in known]
    if copies:
        named = ", ".join(copies[:10]) + (f" and {len(copies) - 10} more" if len(copies) > 10 else "")
        raise Refusal(f"champion v{champion['version']} was trained or validated on the images of {len(copies)} of "
                      f"the challenger's test cases under other ids: {named}; it cannot be scored fairly on them; "
                      f"keep the champion, or promote with --force")


def _refuse_if_preprocessed_otherwise(champion: dict) -> None:
    """Refuse when this workspace's preprocessing code (:data:`~brats_seg.provenance.PREPROCESS_CODE`) is not the
    code the champion's slices were made by (its training run's ``code_files``): the re-score would not feed it
    what it was trained on."""
    recorded = json.loads(tracking.get_run(champion["run_id"])["tags"].get("code_files", "{}"))
    if not recorded:
        raise Refusal(f"champion v{champion['version']}'s training run recorded no code digests, so whether this "
                      f"workspace preprocesses cases as its slices were made cannot be checked; retrain it, or promote "
                      f"with --force")
    changed = sorted(f for f, sha in code_manifest(PREPROCESS_CODE).items() if recorded.get(f) != sha)
    if changed:
        raise Refusal(f"champion v{champion['version']} was trained on slices made by other preprocessing code than "
                      f"this workspace's ({', '.join(changed)} differ{'s' if len(changed) == 1 else ''}), so "
                      f"re-scoring it here would not use its own preprocessing; keep the champion, or promote with "
                      f"--force")


def _load(version: dict) -> ModelBundle:
    from brats_seg.predict import resolve_model

    uri = f"models:/{version['name']}/{version['version']}"
    role = "champion" if "champion" in version.get("aliases", []) else "challenger"
    try:
        return resolve_model(uri, "auto")
    except UserError as exc:
        raise Refusal(f"{role} v{version['version']} cannot be loaded to re-score it ({exc})") from None


def decide(challenger: dict, champion: dict | None, params: PromoteParams, base: BaseParams,
           force: bool = False) -> Decision:
    """The whole gate for two versions (dicts from :func:`tracking.model_version`)."""
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
                                   test_patients=_test_patients(challenger),
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
    """The gate for ``challenger`` (a dict from :func:`tracking.model_version`) against the current champion, as
    :func:`promote` would decide it, with nothing recorded; a comparison that cannot be made is a decision to keep,
    with the reason."""
    champion = tracking.model_version(challenger["name"], alias="champion")
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
        cases = tracking.run_table(champion["run_id"], "eval_cases.csv")  # recorded on the same test split
    return Preview(challenger, champion, decision, cases)


def promote(model_name: str, params: PromoteParams, version: str | None = None, force: bool = False,
            base: BaseParams | None = None) -> dict:
    """Run the gate for ``version`` (default: the ``challenger`` alias); moves ``champion`` if it passes.

    ``base`` locates the workspace's slices and raw data (needed when the champion must be re-scored). The
    decision and its numbers are recorded as tags on the challenger's version and returned.
    """
    challenger = (tracking.model_version(model_name, version=version) if version
                  else tracking.model_version(model_name, alias="challenger"))
    if challenger is None:
        what = f"version {version}" if version else "'challenger' alias"
        raise UserError(f"model {model_name} has no {what} in the registry at {tracking.tracking_uri()}; "
                        f"run the pipeline (dvc repro register) first.")
    champion = tracking.model_version(model_name, alias="champion")
    if champion is not None and champion["version"] == challenger["version"]:
        return _already_champion(model_name, challenger)  # the decision that made it champion stays on record
    try:
        decision = decide(challenger, champion, params, base or BaseParams(), force)
    except DataError as exc:
        raise UserError(f"cannot re-score champion v{champion['version'] if champion else '?'}: {exc}") from None
    if decision.promote:
        tracking.set_alias(model_name, "champion", challenger["version"])
    tags = decision_tags(decision)
    tracking.set_version_tags(model_name, challenger["version"], tags)  # its latest decision
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
