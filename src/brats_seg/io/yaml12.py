"""YAML as DVC reads it: params.yaml's numbers mean to the stages what they mean to ``dvc params diff``."""

from __future__ import annotations

import re
from typing import Any

import yaml


class _NumbersAsDvcReadsThem(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``3e-4`` (no dot) is a string; DVC reads params.yaml as YAML 1.2, where it is
    the number 0.0003. This loader adds YAML 1.2's float form, so that the stages read what ``dvc exp run -S
    train.lr=3e-4`` and ``dvc params diff`` see (integers still resolve first: ``5`` stays an int)."""


_NumbersAsDvcReadsThem.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text safely, numbers read as DVC reads them (:class:`_NumbersAsDvcReadsThem`)."""
    return yaml.load(text, Loader=_NumbersAsDvcReadsThem)  # noqa: S506 (a SafeLoader)
