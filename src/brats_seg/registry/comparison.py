"""Comparing the challenger with the champion on the same test patients, for the promotion gate.

When both versions were tested on one split, with the same images, labels and scoring code, their recorded
numbers are compared. When the challenger was tested on another split (new data arrived), the champion is
re-scored on the challenger's test patients, from the workspace's raw data, with the preprocessing stored with the
champion and the evaluate stage's metric code (:mod:`brats_seg.evaluation.rescore`). That comparison is refused
(:class:`Refusal`) only when the champion cannot be loaded, was trained or validated on any of those patients (or
its run recorded no split tables, so that this cannot be checked), or does not segment the regions the metric needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import TYPE_CHECKING

from brats_seg.base_params import BaseParams
from brats_seg.errors import UserError
from brats_seg.orchestration.provenance import PREPROCESS_CODE, code_manifest, eval_code_digest
from brats_seg.registry import gate, tracking, versions

if TYPE_CHECKING:
    import pandas as pd

    from brats_seg.evaluation import rescore
    from brats_seg.inference.bundle import ModelBundle

log = logging.getLogger(__name__)

TRAINED_ON = ("train", "val")


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


class Refusal(Exception):
    """The two versions cannot be compared fairly; the message says why."""


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
        return Comparison(recorded, test_patients(challenger), split, False)
    from brats_seg.evaluation import rescore

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


def test_patients(version: dict) -> int | None:
    table = versions.split_tables(version["run_id"])
    return None if table is None else int(table.loc[table["split"] == "test", "patient_id"].nunique())


def _refuse_if_seen(champion: dict, tests: pd.DataFrame) -> None:
    """Refuse when the champion's run trained or validated on any of the test cases ``tests`` (columns case_id,
    patient_id, image_sha256): the same patient, or the same images under another id (a renamed copy); or when
    it recorded no splits, so that this cannot be checked."""
    table = versions.split_tables(champion["run_id"])
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
    """Refuse when this workspace's preprocessing code
    (:data:`~brats_seg.orchestration.provenance.PREPROCESS_CODE`) is not the
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
    from brats_seg.registry.resolve import resolve_model

    uri = f"models:/{version['name']}/{version['version']}"
    role = "champion" if "champion" in version.get("aliases", []) else "challenger"
    try:
        return resolve_model(uri, "auto")
    except UserError as exc:
        raise Refusal(f"{role} v{version['version']} cannot be loaded to re-score it ({exc})") from None
