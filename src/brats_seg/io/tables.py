"""Parquet tables and JSON reports, always written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from brats_seg.errors import DataError
from brats_seg.io.atomic import atomic_path

if TYPE_CHECKING:  # a frame brings its own pandas: the commands that read a JSON report skip its 0.4 s import
    import pandas as pd


def write_json(path: str | Path, data: dict | list) -> Path:
    """Write ``data`` as sorted, indented JSON (NumPy scalars become numbers)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, sort_keys=True, default=_plain, allow_nan=False) + "\n")
    return Path(path)


def read_json(path: str | Path) -> dict:
    """A JSON report; a missing one is a DataError that says to run the pipeline stage that writes it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the pipeline stage that writes it first (dvc repro).")
    return json.loads(path.read_text())


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def json_safe(value: object) -> object:
    """NaN and infinities become null: standard JSON has no NaN (docs/design.md reports undefined HD95 so)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _plain(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
