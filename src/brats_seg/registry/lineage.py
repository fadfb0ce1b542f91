"""Lineage of a registered model: version -> run -> git commit -> parameters -> data hashes -> metrics,
and a check that the workspace still matches what produced it: the same parameters in params.yaml, the
same code (every file the stages from download to train run, by content), the same data in dvc.lock and
on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section, runtime_keys
from brats_seg.data.spec import SliceParams
from brats_seg.errors import UserError
from brats_seg.orchestration.dvc import dvc_run
from brats_seg.orchestration.provenance import code_manifest, dvc_lock_hashes, git_state
from brats_seg.registry import tracking, versions
from brats_seg.training.params import TrainParams, model_params

# Settings logged with a run that do not shape the model (marked once, on the params dataclasses): a different
# value in params.yaml is no drift.
RUNTIME_PARAMS = (*runtime_keys(TrainParams, "train"), *runtime_keys(SliceParams, "slice"))


def lineage(uri: str) -> dict:
    """The chain behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    try:
        ref = versions.parse_model_uri(uri)
    except ValueError:
        raise UserError(f"{uri} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION.") from None
    version = versions.model_version(ref["name"], version=ref.get("version"), alias=ref.get("alias"))
    if version is None:
        raise UserError(f"{uri} does not exist in the registry at {tracking.tracking_uri()}; list versions with "
                        f"`mlflow ui` or register one (dvc repro register).")
    run = tracking.get_run(version["run_id"])
    tags = run["tags"]
    return {
        "model": {"uri": uri, "name": ref["name"], "version": version["version"], "aliases": version["aliases"]},
        "run": {"id": version["run_id"], "status": run["status"]},
        "code": {"git_commit": tags.get("git_commit"), "git_dirty": tags.get("git_dirty"),
                 "dvc_experiment": tags.get("dvc_exp_name"), "dvc_baseline": tags.get("dvc_exp_baseline"),
                 "recorded_commit": tags.get("git_recorded_commit"),
                 "inputs": tags.get("inputs_logged"),
                 "code_digest": tags.get("code_digest"), "files": json.loads(tags.get("code_files") or "{}")},
        "params": run["params"],
        "data": {"raw_md5": tags.get("dvc_raw_md5"), "slices_md5": tags.get("dvc_slices_md5"),
                 "split_digest": tags.get("split_digest"), "slice_index_digest": tags.get("slice_index_digest")},
        "metrics": {k: v for k, v in run["metrics"].items() if k.startswith(("test_", "best_val"))},
        "decisions": versions.decision_records(ref["name"], version["version"]),
    }


def verify(chain: dict, params: dict, repo: str | Path = ".") -> list[str]:
    """What in the workspace no longer matches ``chain``: parameters (``params``, the params.yaml mapping),
    code files and data. Each entry names the thing and both values; an empty list means nothing drifted."""
    base = load_section(BaseParams, params, "base")
    return [*_params_drift(chain, params), *_code_drift(chain), *_data_drift(chain, base, repo)]


def _params_drift(chain: dict, params: dict) -> list[str]:
    def logged(train: TrainParams, slicing: SliceParams, seed: int) -> dict[str, str]:
        settings = {k: v for k, v in dataclasses.asdict(slicing).items() if k != "workers"}
        return tracking.param_strings(model_params(train, settings, seed))

    seed = load_section(BaseParams, params, "base").seed
    current = logged(load_section(TrainParams, params, "train"), load_section(SliceParams, params, "slice"), seed)
    # a param added after the model was trained is not recorded; at its default it is what made the model
    defaults = logged(TrainParams(), SliceParams(), seed)
    recorded = chain["params"]
    return [f"params.yaml {key}: the model was trained with {recorded.get(key, '(not recorded)')}, params.yaml "
            f"now says {value}" for key, value in sorted(current.items())
            if key not in RUNTIME_PARAMS and recorded.get(key, defaults.get(key)) != value]


def _code_drift(chain: dict) -> list[str]:
    recorded = chain["code"]["files"]
    if not recorded:
        return ["code: the model's run recorded no code digests (trained by an older brats-seg); retrain to "
                "make its code verifiable"]
    current = code_manifest()
    changed = sorted(f for f in set(recorded) | set(current) if recorded.get(f) != current.get(f))
    return [f"{f}: {'added since' if f not in recorded else 'removed since' if f not in current else 'edited since'}"
            f" the model was trained" for f in changed]


def _data_drift(chain: dict, base: BaseParams, repo: str | Path) -> list[str]:
    drift = []
    lock = dvc_lock_hashes({"raw_md5": base.raw_dir, "slices_md5": base.slices_dir}, Path(repo) / "dvc.lock")
    for key, path in (("raw_md5", base.raw_dir), ("slices_md5", base.slices_dir)):
        recorded, current = chain["data"].get(key), lock.get(key)
        if recorded != current:
            now = (f"dvc.lock now records {current}" if current else
                   "dvc.lock records none (the pipeline has not run on this branch: its data is not this model's)")
            drift.append(f"{path}: the model was trained on md5 {recorded or '(not recorded)'}, {now}")
    for stage_path, state in _dvc_changes(repo).items():
        if any(Path(stage_path) == Path(p) for p in (base.raw_dir, base.slices_dir)):
            drift.append(f"{stage_path}: the workspace files are {state} since dvc.lock was written")
    return drift


def _dvc_changes(repo: str | Path) -> dict[str, str]:
    """``{out path: state}`` for outputs that `dvc status` reports as changed in the workspace."""
    proc = dvc_run(["status", "--json"], repo)
    if proc.returncode != 0:
        raise UserError(f"`dvc status` failed in {repo}: {proc.stderr.strip()[:200]}")
    changes = {}
    for entries in (json.loads(proc.stdout or "{}") or {}).values():
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                changes.update(entry.get("changed outs", {}))
    return changes


def format_chain(chain: dict, head: dict | None = None) -> str:
    """Human-readable chain, one link per line."""
    head = head or git_state()
    code = chain["code"]
    same = ("matches the workspace HEAD" if code["git_commit"] == head["commit"]
            else f"workspace HEAD is {head['commit']}")
    params = {k: v for k, v in sorted(chain["params"].items()) if k.startswith(("train.", "slice.", "seed"))}
    metrics = {k: v for k, v in sorted(chain["metrics"].items()) if "dice_mean" in k or k == "best_val_dice"}
    lines = [
        f"model    {chain['model']['name']} v{chain['model']['version']} (aliases: "
        f"{', '.join(chain['model']['aliases']) or 'none'})",
        f"run      {chain['run']['id']} ({chain['run']['status']})",
        f"commit   {code['git_commit']} (dirty: {code['git_dirty']}; {same})",
        *([f"recorded {code['recorded_commit']} (the commit that holds the params.yaml and dvc.lock of this run)"]
          if code.get("recorded_commit") else []),
        *([f"dvc exp  {code['dvc_experiment'] or '(unnamed)'} from {code['dvc_baseline']}"]
          if code.get("dvc_baseline") else []),
        *([f"inputs   params.yaml and dvc.lock as training began (whatever git holds): run artifacts "
           f"{code['inputs'].replace(',', ', ')}"] if code.get("inputs") else []),
        f"code     digest {code['code_digest']} over {len(code['files'])} files (download to train)",
        "params   " + ", ".join(f"{k}={v}" for k, v in params.items()),
        f"data     raw md5 {chain['data']['raw_md5']}, slices md5 {chain['data']['slices_md5']}",
        f"         split {chain['data']['split_digest']}, slice index {chain['data']['slice_index_digest']}",
        "metrics  " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
    ]
    lines += [f"decision {r['time']} {r['decision']} by {r['user']}@{r['host']}: {r.get('reason', '')}"
              for r in chain.get("decisions", [])] or ["decision none recorded (brats-seg audit lists every one)"]
    return "\n".join(lines)


# --- case-level audit: which registered versions saw a patient ----------------------------------------

def case_lineage(case: str, images: set[str] = frozenset()) -> dict:
    """Every registered model version (of every registered model) whose train, val or test split held the
    patient of ``case`` (a case id, or a patient id: all of that patient's time points count), or the same images
    under another id (a renamed copy: the image digests of ``case`` recorded in any split table, and ``images``,
    e.g. from the workspace's manifest), read from the split tables logged with each version's training run.
    Versions whose run logged none are listed apart."""
    from brats_seg.data.slicing import patient_id

    found_versions = versions.model_versions()
    tables = {}  # run id -> its split tables (versions of one run share them)
    for version in found_versions:
        if version["run_id"] not in tables:
            tables[version["run_id"]] = versions.split_tables(version["run_id"])
    known = [t for t in tables.values() if t is not None]
    digests = {d for t in known for d in t.loc[t["case_id"] == case, "image_sha256"] if d} | {d for d in images if d}
    found, unrecorded = [], []
    for version in found_versions:
        table = tables[version["run_id"]]
        if table is None:
            unrecorded.append(_version_ref(version))
            continue
        patients = {case, patient_id(case), *table.loc[table["case_id"] == case, "patient_id"]}
        rows = table[table["patient_id"].isin(patients) | table["image_sha256"].isin(digests)]
        for (split, patient), group in rows.groupby(["split", "patient_id"], sort=True):
            found.append({**_version_ref(version), "split": split, "patient_id": patient,
                          "case_ids": sorted(group["case_id"]), "same_images_only": patient not in patients})
    return {"case": case, "registry": tracking.shown_uri(), "versions_searched": len(found_versions),
            "found": found, "unrecorded": unrecorded}


def _version_ref(version: dict) -> dict:
    return {"model": version["name"], "version": version["version"], "aliases": version["aliases"],
            "run_id": version["run_id"]}


def format_case_lineage(result: dict) -> str:
    """One line per (version, split) that held the patient; one sentence when none did."""
    lines = []
    if result["found"]:
        versions = {(f["model"], f["version"]) for f in result["found"]}
        lines.append(f"{result['case']} is in the splits of {len(versions)} of {result['versions_searched']} "
                     f"registered model versions:")
        for f in result["found"]:
            aliases = f" @{', @'.join(f['aliases'])}" if f["aliases"] else ""
            copy = f", the images of {result['case']} under another id" if f.get("same_images_only") else ""
            lines.append(f"  {f['model']} v{f['version']}{aliases}: {f['split']} (patient {f['patient_id']}: "
                         f"{', '.join(f['case_ids'])}{copy}; run {f['run_id']})")
    else:
        lines.append(f"no registered model version in {result['registry']} had {result['case']} in its train, val "
                     f"or test split ({result['versions_searched']} versions searched).")
    for ref in result["unrecorded"]:
        lines.append(f"  {ref['model']} v{ref['version']}: its training run recorded no split tables (trained "
                     f"before they were logged), so whether it saw {result['case']} cannot be told")
    return "\n".join(lines)
