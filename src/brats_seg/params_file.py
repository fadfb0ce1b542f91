"""The params file as stages and people touch it: a stage's command line, and ``brats-seg params set``'s edits
(comments kept, every value checked before anything is written)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from brats_seg.config import read_params
from brats_seg.errors import ConfigError
from brats_seg.io.yaml12 import load_yaml


def stage_params(description: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Parse a stage's command line (``--params PATH``, ``-v``), set up logging, return the params file."""
    import argparse

    from brats_seg.console import setup_logging

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return read_params(args.params)


def set_params(path: str | Path, assignments: list[str], validate: Callable[[dict[str, Any], str], None],
               check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` assignments (dotted keys, YAML values) to a params file, keeping its comments.

    The same edit ``dvc exp run -S`` makes; returns the new values. Unknown keys are refused, and the whole
    resulting document is checked (``validate(document, file name)``: every section's values,
    :func:`brats_seg.sections.check_params`; then ``check``, e.g. that no output path holds a user's folder)
    before the file is replaced, atomically.
    """
    import io

    from ruamel.yaml import YAML

    from brats_seg.io.atomic import atomic_path

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    path = Path(path)
    read_params(path)  # exists and is a mapping, else one sentence
    doc = yaml_rt.load(path.read_text())
    changed = {key: _assign(doc, key, raw, path) for key, raw in (_split_assignment(a) for a in assignments)}
    text = io.StringIO()
    yaml_rt.dump(doc, text)
    try:
        validate(load_yaml(text.getvalue()) or {}, str(path))
    except ConfigError as exc:  # a bad value already in the file, not one being set: say how to get past it
        named = re.search(r": (\S+?)(?:\[\d+\])? (?:must|is) ", str(exc))
        if named is None or any(named.group(1) == key or named.group(1).startswith(f"{key}.") for key in changed):
            raise
        raise ConfigError(f"{str(exc)[:-1]}; that value is already in {path}: set it too ({named.group(1)}=...) "
                          f"or restore the file (git checkout -- {path.name}).") from None
    _check_set_paths(changed, path.parent)
    if check is not None:
        check(load_yaml(text.getvalue()) or {})
    with atomic_path(path) as tmp:
        tmp.write_text(text.getvalue())
    return changed


# Folders a stage replaces whole: naming one the project did not create is refused when it is set.
_REPLACED_DIRS = ("base.raw_dir", "base.slices_dir")


def _check_set_paths(changed: dict[str, Any], root: Path) -> None:
    """Refuse, when it is set, a path the pipeline would delete or could not read (relative to ``root``)."""
    from brats_seg.io.atomic import check_removable

    for key, value in changed.items():
        where = root / Path(str(value).strip()).expanduser()
        if key in _REPLACED_DIRS:
            check_removable(where, key)
        elif key == "download.local.path" and value and not where.exists():
            raise ConfigError(f"download.local.path {value} does not exist; point it at a folder of BraTS cases or "
                              f"an archive of them.")


def _split_assignment(item: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"'{item}' is not KEY=VALUE (for example train.epochs=5).")
    return key, raw


def _assign(doc: Any, key: str, raw: str, path: Path) -> Any:
    """Set dotted ``key`` in the round-trip document ``doc`` to the YAML value ``raw``; returns the value."""
    *parents, leaf = key.split(".")
    node = doc
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path}: {key} is not a known key; check the spelling against {path}.")
        node = node[part]
    if not isinstance(node, dict) or leaf not in node:
        raise ConfigError(f"{path}: {key} is not a known key; check the spelling against {path}.")
    try:
        node[leaf] = load_yaml(raw)
    except yaml.YAMLError:
        raise ConfigError(f"{key}={raw} does not hold a YAML value; quote strings and close brackets "
                          f"(for example slice.split=[0.7,0.15,0.15]).") from None
    return node[leaf]
