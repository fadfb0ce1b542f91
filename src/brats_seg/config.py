"""Typed, frozen parameter sections loaded from params.yaml.

Every stage loads only its own section into a frozen dataclass. Unknown keys, missing keys and values of
the wrong type are rejected with one sentence that names the key, e.g.
``params.yaml: slice.size must be an integer, got '128px'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from brats_seg.errors import ConfigError

T = TypeVar("T")


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read the whole params file as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run from the project root or pass --params PATH.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc}); fix the syntax and retry.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}.")
    return data


def load_section(cls: type[T], params: Mapping[str, Any], name: str, source: str = "params.yaml") -> T:
    """Build dataclass ``cls`` from ``params[name]``, checking every key and type."""
    if name not in params:
        raise ConfigError(f"{source} has no '{name}' section; add it (see the project's params.yaml).")
    return build(cls, params[name], f"{source}: {name}")


def build(cls: type[T], value: Any, where: str) -> T:
    """Build a (possibly nested) frozen dataclass from a mapping; ``where`` prefixes error messages."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {value!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a known key (known: {', '.join(fields)}); "
                          f"remove it or fix its spelling.")
    kwargs = {}
    for key, field in fields.items():
        if key not in value:
            no_default = field.default is dataclasses.MISSING
            if no_default and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{key} is missing; add it to the section.")
            continue
        kwargs[key] = _coerce(hints[key], value[key], f"{where}.{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}.")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}.")
        item_types = [args[0]] * len(value) if (origin is list or args[-1] is Ellipsis) else list(args)
        items = [_coerce(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(item_types, value))]
        return tuple(items)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    if hint is Any:
        return value
    raise TypeError(f"unsupported parameter type {hint!r} at {where}")  # a programming error, not the user's


@dataclasses.dataclass(frozen=True)
class BaseParams:
    """params.yaml ``base`` section: the seed and every path, written once and used by dvc.yaml too."""

    seed: int = 42
    raw_dir: str = "data/raw"
    cache_dir: str = "data/cache"
    manifest: str = "data/validated/manifest.parquet"
    validation_reports: str = "reports/validation"
    validation_metrics: str = "reports/validation.json"
    slices_dir: str = "data/slices"
    checkpoint_dir: str = "data/cache/checkpoints"
    model: str = "models/unet.pt"
    train_report: str = "reports/train.json"
    train_curve: str = "reports/train_curve.csv"
    train_curve_png: str = "reports/train_curve.png"
    eval_report: str = "reports/eval.json"
    eval_cases: str = "reports/eval_cases.csv"
    overlays_dir: str = "reports/overlays"
    registered_report: str = "reports/registered.json"
    experiment: str = "brats-seg"


def stage_params(description: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Parse a stage's command line (``--params PATH``, ``-v``), set up logging, return the params file."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return read_params(args.params)


def set_params(path: str | Path, assignments: list[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` assignments (dotted keys, YAML values) to a params file, keeping its comments.

    The same edit ``dvc exp run -S`` makes; returns the new values. Unknown keys are refused.
    """
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    path = Path(path)
    read_params(path)  # exists and is a mapping, else one sentence
    doc = yaml_rt.load(path.read_text())
    changed = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"'{item}' is not KEY=VALUE (for example train.epochs=5).")
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{path}: {key} is not a known key; check the spelling against {path}.")
            node = node[part]
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"{path}: {key} is not a known key; check the spelling against {path}.")
        node[leaf] = yaml.safe_load(raw)
        changed[key] = node[leaf]
    with open(path, "w") as fh:
        yaml_rt.dump(doc, fh)
    return changed
