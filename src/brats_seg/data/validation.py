"""The validate stage: a per-case manifest checked by a great-expectations suite.

Every rule is an expectation on a manifest column; a case that breaks one is quarantined with a reason
built from that expectation, listed in the report and left out downstream. A case whose four images are
identical in content to an earlier case's (by sorted id: a byte copy, a re-compressed copy or links to its
files) is quarantined as a duplicate of that case, so one patient cannot sit in two splits. The stage fails
when more than ``max_bad_fraction`` of the cases are bad, or when the cohort breaks a hard rule (no cases,
duplicate ids).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from brats_seg.config import require_at_least, require_fraction, runtime_field
from brats_seg.data.inspect import inspect_case
from brats_seg.data.layouts import UNLABELLED_DIR, list_canonical_cases
from brats_seg.errors import DataError
from brats_seg.io.atomic import claim_output_dir, mark_output_dir, remove_output_dir
from brats_seg.io.tables import write_json, write_parquet
from brats_seg.orchestration.executors import LOCAL, Executor, run_parallel

if TYPE_CHECKING:  # imported where a frame is made: `brats-seg params set` checks ValidateParams without pandas
    import pandas as pd

log = logging.getLogger(__name__)

SUITE_NAME = "brats_cases"
DOCS_SITE = "brats"


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    """params.yaml ``validate`` section."""

    max_bad_fraction: float = 0.1
    min_brain_voxels: int = 1000
    workers: int = runtime_field(0)

    def __post_init__(self) -> None:
        require_fraction("validate.max_bad_fraction", self.max_bad_fraction)
        require_at_least("validate.min_brain_voxels", self.min_brain_voxels, 0)
        require_at_least("validate.workers", self.workers, 0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One per-case rule: a great-expectations expectation and the reason it gives a quarantined case."""

    column: str
    kind: str  # "in_set" or "between"
    reason: str  # formatted with the case's value as {value} and its row as {row}
    value_set: tuple = ()
    min_value: float | None = None
    max_value: float | None = None


def case_rules(params: ValidateParams) -> list[Rule]:
    return [
        Rule("files_missing", "in_set", "missing file(s): {value}; add them or remove the case", ("",)),
        Rule("files_unreadable", "in_set", "unreadable file(s): {value}", ("",)),
        Rule("ndim", "between", "a volume is not 3D ({row[shapes]})", min_value=3, max_value=3),
        Rule("same_grid", "in_set", "files are not on one grid ({row[shapes]})", (True,)),
        Rule("nan_inf_voxels", "between", "{value} NaN or Inf voxels", min_value=0, max_value=0),
        Rule("all_zero_modalities", "in_set", "all-zero modality: {value}", ("",)),
        Rule("unexpected_labels", "in_set", "labels outside {{0, 1, 2, 4}}: {value}", ("",)),
        Rule("brain_voxels", "between", "only {value} brain voxels (minimum {rule.min_value:g})",
             min_value=params.min_brain_voxels),
        Rule("spacing_min", "between", "implausible voxel spacing {row[spacing]} mm", min_value=0.1, max_value=10.0),
        Rule("duplicate_of", "in_set", "same image content as {value} (a copy of it or a link to it); remove one "
             "of the two", ("",)),
    ]


def build_manifest(raw_dir: str | Path, workers: int = 0, executor: Executor = LOCAL) -> pd.DataFrame:
    """One row per labelled case under ``raw_dir`` (see :func:`inspect_case`), inspected by ``executor``."""
    cases = list_canonical_cases(raw_dir)
    if not cases:
        raise DataError(f"no cases in {raw_dir}; run the download stage first (dvc repro download).")
    import pandas as pd

    rows = run_parallel(inspect_case, cases, workers, desc="inspect cases", executor=executor)
    manifest = pd.DataFrame(rows)
    manifest["duplicate_of"] = duplicate_of(manifest["case_id"].tolist(), manifest["image_sha256"].tolist())
    return manifest


def duplicate_of(case_ids: list[str], digests: list[str]) -> list[str]:
    """For each case, the first case (by sorted id) with the same image digest, or "" (also for no digest)."""
    first: dict[str, str] = {}
    for case_id, digest in sorted(zip(case_ids, digests)):
        if digest:
            first.setdefault(digest, case_id)
    return [first[d] if d and first[d] != c else "" for c, d in zip(case_ids, digests)]


def run_validate(params: ValidateParams, raw_dir: str | Path, manifest_path: str | Path,
                 report_dir: str | Path, metrics_path: str | Path, executor: Executor = LOCAL) -> dict:
    """Validate the cohort in ``raw_dir``, inspecting cases with ``executor``; writes the manifest, reports and
    metrics; returns the metrics."""
    manifest = build_manifest(raw_dir, params.workers, executor)
    results = run_suite(manifest, case_rules(params), report_dir)
    duplicates = [r for r in results["table"] if not r["success"]]
    manifest["reasons"] = [results["reasons"].get(c, "") for c in manifest["case_id"]]
    manifest["status"] = ["quarantined" if r else "ok" for r in manifest["reasons"]]
    write_parquet(manifest, manifest_path)
    bad = manifest[manifest["status"] == "quarantined"]
    metrics = {
        "cases": len(manifest), "ok": int((manifest["status"] == "ok").sum()), "quarantined": len(bad),
        "bad_fraction": round(len(bad) / len(manifest), 4),
        "unlabelled": len(list_canonical_cases(Path(raw_dir) / UNLABELLED_DIR)),
        "expectations_failed": results["failed"],
    }
    _write_reports(bad, metrics, report_dir, metrics_path)
    for case_id, reasons in zip(bad["case_id"], bad["reasons"]):
        log.warning("quarantined %s: %s", case_id, reasons)
    if duplicates:
        raise DataError(f"case ids are not unique (ignoring case): {duplicates[0]['detail']}; rename or remove "
                        f"the duplicates in {raw_dir}.")
    if metrics["bad_fraction"] > params.max_bad_fraction:
        raise DataError(f"{len(bad)} of {len(manifest)} cases failed validation, more than "
                        f"validate.max_bad_fraction={params.max_bad_fraction:g}; see {report_dir}/quarantine.csv "
                        f"(first: {bad['case_id'].iloc[0]}: {bad['reasons'].iloc[0]}).")
    log.info("validate: %d ok, %d quarantined of %d cases", metrics["ok"], metrics["quarantined"], metrics["cases"])
    return metrics


def run_suite(manifest: pd.DataFrame, rules: list[Rule], report_dir: str | Path) -> dict:
    """Run the expectation suite on ``manifest`` and build great-expectations data docs in ``report_dir``.

    Returns ``{"reasons": {case_id: "reason; reason"}, "table": [...], "failed": n}``.
    """
    with _private_tempdir():
        return _run_suite(manifest, rules, report_dir)


@contextlib.contextmanager
def _private_tempdir() -> Iterator[None]:
    """Send every temporary file or folder made inside the block to a private folder removed on any exit.

    great-expectations' default ephemeral context declares a throw-away data docs site in a fresh temporary
    folder, which a checkpoint builds (about 4 MB) and nothing removes. :func:`_run_suite` no longer declares
    it; this catches that and whatever else the library leaves behind, on success, error or interrupt.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="brats-validate-") as private:
        tempfile.tempdir = private
        try:
            yield
        finally:
            tempfile.tempdir = previous


def _run_suite(manifest: pd.DataFrame, rules: list[Rule], report_dir: str | Path) -> dict:
    import great_expectations as gx  # slow import, only where needed
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # and again: it resets it on import
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    claim_output_dir(report_dir)  # brats-seg clean removes it only so
    docs = Path(report_dir) / "data_docs"
    remove_output_dir(docs, "base.validation_reports data_docs folder")
    mark_output_dir(docs)
    in_memory = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    context = gx.get_context(mode="ephemeral", project_config=in_memory)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(site_name=DOCS_SITE, site_config={
        "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())}})
    batch = context.data_sources.add_pandas("manifest").add_dataframe_asset("cases")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for rule in rules:
        if rule.kind == "in_set":
            exp = gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=list(rule.value_set))
        else:
            exp = gxe.ExpectColumnValuesToBeBetween(column=rule.column, min_value=rule.min_value,
                                                    max_value=rule.max_value)
        suite.add_expectation(exp)
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="case_key"))
    definition = context.validation_definitions.add(gx.ValidationDefinition(
        data=batch.add_batch_definition_whole_dataframe("all"), suite=suite, name=SUITE_NAME))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=SUITE_NAME, validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["case_id"]}))
    outcome = checkpoint.run(batch_parameters={"dataframe": manifest})
    suite_result = next(iter(outcome.run_results.values()))
    write_json(Path(report_dir) / "expectations.json", suite_result.describe_dict())
    return _collect(suite_result, rules, manifest)


def _collect(suite_result, rules: list[Rule], manifest: pd.DataFrame) -> dict:
    by_column = {r.column: r for r in rules}
    rows = manifest.set_index("case_id", drop=False)
    reasons: dict[str, list[str]] = {}
    table, failed = [], 0
    for res in suite_result.results:
        column = res.expectation_config.kwargs["column"]
        failed += not res.success
        unexpected = res.result.get("unexpected_index_list") or []
        if column not in by_column:  # the cohort-level uniqueness rule
            detail = ", ".join(sorted({str(u["case_id"]) for u in unexpected}))
            table.append({"rule": res.expectation_config.type, "success": res.success, "detail": detail})
            continue
        rule = by_column[column]
        for item in unexpected:
            case_id = str(item["case_id"])
            text = rule.reason.format(value=item[column], row=rows.loc[case_id], rule=rule)
            reasons.setdefault(case_id, []).append(text)
    return {"reasons": {k: "; ".join(v) for k, v in reasons.items()}, "table": table, "failed": failed}


def _write_reports(bad: pd.DataFrame, metrics: dict, report_dir: str | Path, metrics_path: str | Path) -> None:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    bad[["case_id", "reasons"]].to_csv(report_dir / "quarantine.csv", index=False)
    write_json(metrics_path, metrics)


def read_manifest(path: str | Path, status: str | None = "ok") -> pd.DataFrame:
    """The manifest; with ``status`` only the cases of that status (default: the ones fit to use)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the validate stage first (dvc repro validate).")
    import pandas as pd

    frame = pd.read_parquet(path)
    return frame if status is None else frame[frame["status"] == status].reset_index(drop=True)
