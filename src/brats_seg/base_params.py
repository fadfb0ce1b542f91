"""params.yaml ``base`` (the seed, every path, where per-case work runs) and ``schedule`` (when the flow reruns)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Literal

from brats_seg.config import path_field, require, require_at_least, require_match, runtime_field

ExecutorKind = Literal["auto", "local", "dask"]
_DASK_ADDRESS = r"|([a-z][a-z0-9+]*://)?([^\s:/\[\]]+|\[[0-9A-Fa-f:.]+\])(:\d+)?"  # '', host[:port], [v6]:port


# What the repository itself holds: no base path may name one of them or lie inside one.
_PROJECT_OWNED = frozenset({".git", ".dvc", ".ci", ".dvcignore", ".gitignore", "Makefile", "README.md", "benchmarks",
                            "constraints.txt", "docs", "scripts", "dvc.yaml", "dvc.lock", "flows", "mlflow",
                            "params.yaml",
                            "prefect.toml", "prefect.yaml", "pyproject.toml", "src", "stages", "tests", ".venv"})
# Untracked folders (no dvc.yaml output), which may also be absolute: a cache on a scratch disk.
_ANYWHERE = ("cache_dir", "checkpoint_dir")
# The kind of file each base path that names a file holds (the others are folders).
_PATH_SUFFIX = {"source_manifest": ".json", "manifest": ".parquet", "validation_metrics": ".json", "model": ".pt",
                "train_report": ".json", "train_run": ".json", "train_curve": ".csv", "train_curve_png": ".png",
                "eval_report": ".json", "eval_metrics": ".json",
                "eval_cases": ".csv", "eval_lesions": ".csv", "registered_report": ".json", "report": ".html"}


def check_project_path(key: str, value: str) -> None:
    """``value`` (params key ``key``, e.g. ``base.model``) names a file or folder the pipeline may write: a
    relative path inside the repository, not its root, not one of the repository's own files or folders, and,
    for a file, of its kind (``base.model`` a .pt file). Raises the one-sentence ConfigError otherwise."""
    text = value.strip()
    require(key, value, bool(text), "a non-empty path or name")
    if key.rpartition(".")[2] in _ANYWHERE and Path(text).is_absolute():  # e.g. a scratch disk
        home = Path.home().resolve()
        resolved = Path(text).resolve()
        require(key, value, resolved != Path(resolved.anchor) and resolved not in (home, *home.parents),
                "a folder of its own, not the file system's root or a home folder or one above it")
        return
    parts = Path(text).parts
    inside = not Path(text).is_absolute() and not text.startswith("~") and ".." not in parts
    require(key, value, inside and bool(parts) and parts != (".",), "a relative path inside the repository, "
            "below its root (e.g. data/raw); an absolute path, ~ or .. would let a stage write outside it")
    first = next(p for p in parts if p != ".")
    require(key, value, first not in _PROJECT_OWNED, f"a path the pipeline owns, not {first} (a file or folder of "
            f"the repository itself); use one under data/, models/ or reports/")
    suffix = _PATH_SUFFIX.get(key.rpartition(".")[2])
    if suffix:
        require(key, value, Path(text).suffix == suffix, f"a {suffix} file (the kind {key} holds)")


@dataclasses.dataclass(frozen=True)
class BaseParams:
    """params.yaml ``base`` section: the seed and every path, written once and used by dvc.yaml too, and where
    per-case work runs (``executor``, ``dask_address``)."""

    seed: int = 42
    raw_dir: str = path_field("data/raw")
    cache_dir: str = path_field("data/cache")
    source_manifest: str = path_field("data/source.json")
    manifest: str = path_field("data/validated/manifest.parquet")
    validation_reports: str = path_field("reports/validation")
    validation_metrics: str = path_field("reports/validation.json")
    slices_dir: str = path_field("data/slices")
    checkpoint_dir: str = path_field("data/cache/checkpoints")
    model: str = path_field("models/unet.pt")
    train_report: str = path_field("reports/train.json")
    train_run: str = path_field("reports/train_run.json")
    train_curve: str = path_field("reports/train_curve.csv")
    train_curve_png: str = path_field("reports/train_curve.png")
    eval_report: str = path_field("reports/eval.json")
    eval_metrics: str = path_field("reports/eval_metrics.json")
    eval_cases: str = path_field("reports/eval_cases.csv")
    eval_lesions: str = path_field("reports/eval_lesions.csv")
    overlays_dir: str = path_field("reports/overlays")
    registered_report: str = path_field("reports/registered.json")
    report: str = path_field("reports/index.html")
    experiment: str = runtime_field("brats-seg")  # where runs are tracked, not what they make
    # Where validate, slice and synthetic download run their per-case work
    # (brats_seg.orchestration.executors.choose_executor):
    # never part of any output, so never among a dvc.yaml stage's params.
    executor: ExecutorKind = runtime_field("auto")
    dask_address: str = runtime_field("")

    def __post_init__(self) -> None:
        require_at_least("base.seed", self.seed, 0)
        require("base.experiment", self.experiment, bool(self.experiment.strip()), "a non-empty name")
        for field in dataclasses.fields(self):
            if field.metadata.get("path"):
                check_project_path(f"base.{field.name}", getattr(self, field.name))
        require("base.executor", self.executor, self.executor in typing.get_args(ExecutorKind), "auto, local or dask")
        require_match("base.dask_address", self.dask_address, _DASK_ADDRESS,
                      "empty or a Dask scheduler address such as tcp://10.0.0.5:8786")


@dataclasses.dataclass(frozen=True)
class ScheduleParams:
    """params.yaml ``schedule`` section: when the served pipeline retrains (flows/serve.py)."""

    cron: str = "0 3 * * 1"
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        import zoneinfo

        fields = self.cron.split()
        cron_ok = len(fields) == 5 and all(re.fullmatch(r"[0-9A-Za-z*,/?LW#-]+", f) for f in fields)
        require("schedule.cron", self.cron, cron_ok, "a cron expression of five fields (minute hour day month "
                "weekday), e.g. '0 3 * * 1'")
        try:
            zoneinfo.ZoneInfo(self.timezone)
            tz_ok = bool(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            tz_ok = False
        require("schedule.timezone", self.timezone, tz_ok, "an IANA time zone such as UTC or Europe/Berlin")
