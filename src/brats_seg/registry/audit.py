"""The promotion audit trail: every decision (promoted, kept, refused, forced) is a record of its own, never
overwritten, with its numbers, who ran it (user, host) and when.

Records are runs of the MLflow experiment ``brats-seg-audit`` (:func:`brats_seg.registry.versions.log_decision_record`):
they live in the tracking store beside the models, survive every later decision, and a team's server holds them
for everyone. The version's own ``promotion_*`` tags only say its latest decision.
"""

from __future__ import annotations

import getpass
import socket

from brats_seg.registry import gate, tracking, versions


def decision_kind(promoted: bool, reason: str) -> str:
    """``forced``, ``promoted``, ``refused`` (the two versions could not be compared fairly) or ``kept``."""
    if reason == "forced":
        return "forced"
    if promoted:
        return "promoted"
    return "refused" if reason.startswith("refused to compare") else "kept"


def record_decision(model_name: str, version: str, tags: dict[str, str], promoted: bool, reason: str) -> str:
    """Append one decision to the trail: ``tags`` (the numbers, as on the version) with its kind, the user and
    the host; returns the record's id."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    record = {key.removeprefix("promotion_"): value for key, value in tags.items()}
    record.update(decision=decision_kind(promoted, reason), user=user, host=socket.gethostname())
    return versions.log_decision_record(model_name, version, record)


def history(model_name: str, version: str | None = None) -> list[dict]:
    """The decisions recorded for a model (or one version), oldest first."""
    return versions.decision_records(model_name, version)


def format_history(model_name: str, records: list[dict]) -> str:
    """One line per decision: when, which version, what, by whom, and the numbers behind it."""
    if not records:
        return f"no promotion decision recorded for {model_name} in {tracking.shown_uri()}"
    return "\n".join(format_record(r) for r in records)


def format_record(r: dict) -> str:
    compared = "" if r.get("compared_with", "none") == "none" else (
        f" vs champion v{r['compared_with']} {r.get('champion_dice', '?')}"
        f"{' (re-scored)' if r.get('champion_rescored') == 'true' else ''}")
    return (f"{r['time']}  {r['model']} v{r['version']}  {r['decision']:<8}  by {r['user']}@{r['host']}  "
            f"test {gate.label(r.get('metric', 'wt_dice'))} {r.get('challenger_dice', '?')}{compared} on "
            f"{r.get('test_patients', '?')} test patients: {r.get('reason', '')}")


def _three(value: str) -> str:
    """A recorded metric to 3 decimals as the table shows it (the tag keeps every digit); anything else as it is."""
    try:
        return f"{float(value):.3f}"
    except ValueError:
        return value


def format_versions(model_name: str, versions: list[dict]) -> str:
    """One line per registered version: its aliases, regions, test WT Dice and mean lesion-wise Dice (where recorded),
    latest promotion decision, run and network."""
    if not versions:
        return f"no registered version of {model_name} in {tracking.shown_uri()}; run the pipeline (dvc repro register)"
    lines = []
    for v in versions:
        tags = v["tags"]
        aliases = " ".join(f"@{a}" for a in sorted(v["aliases"])) or "-"
        dice, decision = _three(tags.get("test_wt_dice_mean", "?")), tags.get("promotion_decision", "none")
        regions = gate.version_regions(tags)
        lesion = gate.from_tags(tags, "lesion_dice", regions)
        lesion_text = "?" if lesion != lesion else f"{lesion:.3f}"
        model = tags.get("model", "unet")  # versions registered before the tag: U-Nets
        what = "mean lesion-wise Dice" if len(regions) > 1 else f"{regions[0].upper()} lesion-wise Dice"
        lines.append(f"{v['name']} v{v['version']:<4} {aliases:<24} {','.join(regions):<9} test WT Dice {dice:<9} "
                     f"{what} {lesion_text:<9} latest decision {decision:<9} run {v['run_id']} ({model})")
    return "\n".join(lines)
