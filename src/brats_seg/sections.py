"""Every section of params.yaml and the dataclass that checks it, and the check of a whole document: what
`brats-seg params set` writes and what the flow runs on, before any stage.

This module sits above the phases that own the sections, so it imports them all. Of the stages only `source`
imports it: DVC runs that one first in every `dvc repro` whatever changed, and it checks the whole document, so that
a mistyped key is said even where no stage it belongs to reruns. Every other stage loads its own sections
(:func:`brats_seg.config.load_section`), so that its import closure, hence its dvc.yaml code deps, holds its own
sections and not every other one (an edit to the promotion gate's metrics must not re-slice the cohort).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brats_seg.base_params import BaseParams, ScheduleParams
from brats_seg.config import PARAMS_FILE, build, check_unet_fits, read_params
from brats_seg.data.sources import DownloadParams
from brats_seg.data.spec import SliceParams
from brats_seg.data.validation import ValidateParams
from brats_seg.evaluation.params import EvaluateParams
from brats_seg.orchestration.outputs import check_output_folders
from brats_seg.registry.params import PromoteParams, RegisterParams
from brats_seg.training.params import TrainParams

# Every section of params.yaml and its dataclass; each lives in a module that imports no torch, MLflow or Prefect
# (tests/test_config.py holds them so, and holds this table equal to params.yaml's sections).
SECTIONS: dict[str, type] = {
    "base": BaseParams,
    "download": DownloadParams,
    "validate": ValidateParams,
    "slice": SliceParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "register": RegisterParams,
    "promote": PromoteParams,
    "schedule": ScheduleParams,
}


def check_params(params: Mapping[str, Any], source: str = PARAMS_FILE) -> None:
    """Check a whole params document: every known section present in it (others are left alone), then the rule
    between the slice and train sections on their values, defaults included. Raises ConfigError with one sentence
    for the first problem."""
    built = {name: build(cls, params[name], f"{source}: {name}") for name, cls in SECTIONS.items() if name in params}
    if "slice" in built and "train" in built:
        train: TrainParams = built["train"]
        check_unet_fits(built["slice"].size, train.depth, train.base, train.batch_size, source)


def check_workspace_params(workdir: str | Path = ".") -> None:
    """Check ``workdir``'s params.yaml as every stage will (one sentence, ConfigError), and that no output path
    holds a folder of the user's (:func:`~brats_seg.orchestration.outputs.check_output_folders`), before dvc
    runs any stage."""
    path = Path(workdir) / "params.yaml"
    check_params(read_params(path), str(path))
    check_output_folders(workdir)
