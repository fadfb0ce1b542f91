"""Typed, frozen parameter sections loaded from params.yaml.

Every stage loads only its own section into a frozen dataclass. Unknown keys, missing keys, values of the
wrong type and values outside their meaning are rejected with one sentence that names the key, the value
and what is allowed, e.g. ``params.yaml: train.epochs must be an integer >= 1, got -1.``

Types are checked by pydantic (:func:`build`: strict, as JSON reads YAML's values, no unknown key), its errors
formatted here into those sentences; each section's dataclass checks the meaning of its values in
``__post_init__`` with :func:`require` and its shorthands. The dataclasses live with the phases that own them
(this module sits below those); :mod:`brats_seg.sections` names every one and checks a whole document. The rule
that ties two sections together, :func:`check_unet_fits`, is applied by :func:`load_section` to the values both
sections write (``slice.size: 60`` with ``train.depth: 3`` stops the slice stage before it slices anything), by
the whole-document check, and by training on the slices it reads.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from brats_seg.errors import ConfigError
from brats_seg.io.yaml12 import load_yaml

T = TypeVar("T")


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read the whole params file as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run from the project root or pass --params PATH.")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc}); fix the syntax and retry.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}.")
    return data


PARAMS_FILE = "params.yaml"  # how __post_init__ messages name the file; build() puts the real name in

def load_section(cls: type[T], params: Mapping[str, Any], name: str, source: str = PARAMS_FILE) -> T:
    """Build dataclass ``cls`` from ``params[name]``, checking every key, type and value, and the rule that ties
    the slice and train sections where ``params`` writes both values (:func:`check_cross_section`)."""
    if name not in params:
        raise ConfigError(f"{source} has no '{name}' section; add it (see the project's params.yaml).")
    section = build(cls, params[name], f"{source}: {name}")
    if name in ("slice", "train"):
        check_cross_section(params, source)
    return section


def check_cross_section(params: Mapping[str, Any], source: str = PARAMS_FILE) -> None:
    """:func:`check_unet_fits` on the values ``params`` writes: ``slice.size`` and ``train.depth`` (with
    ``train.base`` and ``train.batch_size`` for the memory). A value that is missing or not yet valid is left to
    its own section's check, and to the whole-document check and training, which know the defaults."""
    size, depth = _written(params, "slice", "size"), _written(params, "train", "depth")
    if not (_is_int(size) and _is_int(depth) and size >= 1 and depth >= 1):
        return
    base, batch = _written(params, "train", "base"), _written(params, "train", "batch_size")
    memory = _is_int(base) and _is_int(batch) and base >= 1 and batch >= 1
    check_unet_fits(size, depth, base if memory else None, batch if memory else None, source)


def check_unet_fits(size: int, depth: int, base: int | None = None, batch: int | None = None,
                    source: str = PARAMS_FILE) -> None:
    """Slices of side ``size`` must be divisible by ``2 ** depth`` (the U-Net pools ``depth`` times and
    concatenates skips of equal size); with ``base`` and ``batch``, one training step must fit this host's memory
    (:func:`check_training_memory`). One sentence (ConfigError) otherwise."""
    step = 2**depth
    if size % step:
        raise ConfigError(f"{source}: slice.size must be a multiple of 2**train.depth = {step} (train.depth is "
                          f"{depth}), got {size}; use a multiple of {step} such as "
                          f"{max(step, round(size / step) * step)}, or a smaller train.depth.")
    if base is not None and batch is not None:
        check_training_memory(base, depth, size, batch, host_memory(), "this host's memory", source)


def training_memory_bytes(base: int, depth: int, size: int, batch: int) -> int:
    """A lower bound of the memory one training step of the U-Net takes, in bytes: the second 3 x 3 conv of each
    encoder level (``base * 2**i`` channels) as weights, gradients and Adam's two moments (float32), and two
    saved float32 activations per level for a batch of ``size x size`` slices. The real need is higher."""
    weights = sum(9 * (base * 2**i) ** 2 for i in range(depth + 1))
    activations = sum(2 * batch * base * 2**i * (size // 2**i) ** 2 for i in range(depth + 1))
    return 4 * (4 * weights + activations)


def check_training_memory(base: int, depth: int, size: int, batch: int, available: int, what: str,
                          source: str = PARAMS_FILE) -> None:
    """Refuse, in one sentence, a U-Net and batch whose :func:`training_memory_bytes` exceed ``available``."""
    need = training_memory_bytes(base, depth, size, batch)
    if need > available:
        raise ConfigError(f"{source}: train.base {base}, train.depth {depth}, train.batch_size {batch} at slice.size "
                          f"{size} need at least {need / 1e9:,.1f} GB to train, more than {what} "
                          f"({available / 1e9:,.1f} GB); lower train.base, train.batch_size or slice.size.")


def host_memory() -> int:
    """This host's physical memory in bytes."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


RUNTIME = "runtime"  # field metadata key: the field never changes an output


def runtime_field(default: Any) -> Any:
    """A params field that says where or how fast work runs, never what it produces (``workers``, ``resume``,
    ``executor``...). The one mark every list of "what shapes a result" is derived from: such a field is no
    dvc.yaml param (tests/test_dvc_deps.py), not in the training fingerprint, and no drift for lineage."""
    return dataclasses.field(default=default, metadata={RUNTIME: True})


def path_field(default: str) -> Any:
    """A params field naming a file or folder of the project: a dependency or output in dvc.yaml (``${base.*}``),
    never a param; checked to lie inside the repository (:class:`BaseParams`)."""
    return dataclasses.field(default=default, metadata={"path": True})


def result_keys(cls: type) -> tuple[str, ...]:
    """The fields of params dataclass ``cls`` that shape a result (those not marked :func:`runtime_field`)."""
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get(RUNTIME))  # type: ignore[arg-type]


def runtime_keys(cls: type, name: str) -> tuple[str, ...]:
    """The dotted keys of section ``name`` (checked by ``cls``) marked :func:`runtime_field`, e.g.
    ``("train.resume", ...)``."""
    return tuple(f"{name}.{f.name}" for f in dataclasses.fields(cls) if f.metadata.get(RUNTIME))


def _written(params: Mapping[str, Any], section: str, key: str) -> Any:
    """``params[section][key]`` as written; None when the section or the key is absent."""
    values = params.get(section)
    return values.get(key) if isinstance(values, Mapping) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise the one-sentence ConfigError for params key ``key`` (dotted, e.g. ``train.epochs``) unless
    ``ok``; ``allowed`` completes "must be ...", e.g. "an integer >= 1"."""
    if not ok:
        raise ConfigError(f"{PARAMS_FILE}: {key} must be {allowed}, got {value!r}.")


def require_at_least(key: str, value: float, low: float) -> None:
    """``value >= low`` (and finite): ``train.epochs must be an integer >= 1, got 0.``"""
    require(key, value, math.isfinite(value) and value >= low, f"{_kind(value)} >= {low:g}")


def require_positive(key: str, value: float) -> None:
    """``value > 0`` (and finite): ``train.lr must be a number > 0, got -0.1.``"""
    require(key, value, math.isfinite(value) and value > 0, f"{_kind(value)} > 0")


def require_fraction(key: str, value: float) -> None:
    """``0 <= value <= 1``: ``validate.max_bad_fraction must be a number from 0 to 1, got 1.5.``"""
    require(key, value, 0.0 <= value <= 1.0, "a number from 0 to 1")


def require_match(key: str, value: str, pattern: str, allowed: str) -> None:
    """``value`` matches the regular expression ``pattern`` as a whole."""
    require(key, value, re.fullmatch(pattern, value) is not None, allowed)


def require_url(key: str, value: str) -> None:
    require_match(key, value, r"https?://[^\s/]+\S*", "an http:// or https:// URL")


def _kind(value: Any) -> str:
    return "an integer" if isinstance(value, int) else "a number"


def build(cls: type[T], value: Any, where: str) -> T:
    """Build a (possibly nested) frozen dataclass from a mapping, types checked by pydantic (strict, as JSON: a
    list for a tuple, an integer for a float, nothing else converted; no unknown key); ``where`` prefixes error
    messages, each one sentence formatted from the first error (:func:`_sentence`)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {value!r}.")
    try:
        return _adapter(cls).model_validate_json(json.dumps({"v": value}, default=str)).v  # + __post_init__
    except pydantic.ValidationError as exc:
        raise ConfigError(_sentence(cls, exc, where)) from None
    except ConfigError as exc:
        source = where.partition(": ")[0]
        message = str(exc)
        if source == PARAMS_FILE or not message.startswith(f"{PARAMS_FILE}: "):
            raise
        raise ConfigError(source + message[len(PARAMS_FILE):]) from None


@functools.cache
def _adapter(cls: type) -> type[pydantic.BaseModel]:
    """A pydantic model holding one ``cls`` as ``v``: its strict, no-extra-keys config reaches every nested
    dataclass of the section."""
    return pydantic.create_model(f"{cls.__name__}Section", __config__=_STRICT, v=(cls, ...))


_STRICT = pydantic.ConfigDict(strict=True, extra="forbid")
# What a value must be, per pydantic error type (the rest of the sentence: ", got <value>.").
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
             "bool_parsing": "true or false", "string_type": "a string", "tuple_type": "a list",
             "list_type": "a list", "dataclass_type": "a mapping of keys", "dict_type": "a mapping of keys",
             "model_type": "a mapping of keys", "dataclass_exact_type": "a mapping of keys"}
_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")


def _sentence(cls: type, exc: pydantic.ValidationError, where: str) -> str:
    """One sentence for the first problem pydantic found (an unknown key before anything else, then in field
    order): the key's dotted path, what it must be (every option of a union) and the value given."""
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] in _UNKNOWN), errors[0])
    path, hint, tags = _walk(cls, first["loc"][1:])
    key = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    if first["type"] in _UNKNOWN:
        known = ", ".join(f.name for f in dataclasses.fields(_walk(cls, first["loc"][1:-1])[1]))
        return f"{key} is not a known key (known: {known}); remove it or fix its spelling."
    if first["type"] == "too_long" or first["type"] == "missing" and path and isinstance(path[-1], int):
        if first["type"] == "missing":  # an item short: the location is the missing item's, in the tuple
            path, key = path[:-1], key[:key.rindex("[")]
        size = len(typing.get_args(_walk(cls, first["loc"][1:len(path) + 1])[1]))
        return f"{key} must have {size} items, got {len(first['input'])}."
    if first["type"] == "missing":
        return f"{key} is missing; add it to the section."
    if tags:  # a value that fits no option of a union: each option's own error, in the union's order
        same = [e for e in errors if _walk(cls, e["loc"][1:])[0] == path]
        return f"{key} must be {' or '.join(_expected(e) for e in same)}, got {first['input']!r}."
    return f"{key} must be {_expected(first)}, got {first['input']!r}."


def _expected(error: Mapping[str, Any]) -> str:
    if error["type"] == "literal_error":
        options = error["ctx"]["expected"]
        return options if " or " not in options and "," not in options else f"one of {options.replace(' or ', ', ')}"
    return _EXPECTED.get(error["type"], error["msg"].removeprefix("Input should be ").lower())


def _walk(cls: type, loc: tuple) -> tuple[list, Any, list]:
    """Follow pydantic's error location ``loc`` through the type hints from ``cls``: the path a user reads (field
    names and list indices), the type hint reached, and the union member tags passed on the way."""
    hint: Any = cls
    path, tags = [], []
    for part in loc:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            tags.append(part)
            continue
        if isinstance(part, int) and origin in (tuple, list):
            args = typing.get_args(hint)
            hint = args[0] if origin is list or args[-1] is Ellipsis else args[min(part, len(args) - 1)]
        elif dataclasses.is_dataclass(hint) and isinstance(part, str):
            hint = typing.get_type_hints(hint).get(part, Any)
        else:
            hint = Any
        path.append(part)
    return path, hint, tags
