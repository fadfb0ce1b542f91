"""``train.folds``: an ensemble of networks trained on patient-level folds of the training split.

The training patients are ordered by the split's hash (:func:`~brats_seg.data.slicing.patient_position`) and dealt
round-robin into ``folds`` folds, so every fold holds patients and the same cohort always gives the same folds.
Member ``i`` trains on the patients outside fold ``i`` and keeps its best epoch on fold ``i`` (its own validation
patients, reported per fold); the ensemble (:class:`~brats_seg.models.ensemble.Ensemble`) averages the members'
probabilities and is what the model file, evaluation, prediction and the registry use. Each member checkpoints
under the run's fingerprint and its fold, so an interrupted ensemble resumes at the member it was training.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from brats_seg.data.slicing import patient_id, patient_position
from brats_seg.errors import DataError
from brats_seg.models.ensemble import Ensemble
from brats_seg.training.distributed import Ranks
from brats_seg.training.loop import Split, TrainResult, train_model
from brats_seg.training.params import TrainParams
from brats_seg.training.selection import LesionSelection

log = logging.getLogger(__name__)


def member_folds(case_ids: np.ndarray, seed: int, folds: int) -> np.ndarray:
    """The fold ``[0, folds)`` of each slice's patient: patients ordered by their split hash, dealt round-robin.
    Refused in one sentence when there are fewer training patients than folds."""
    patients = np.array([patient_id(str(c)) for c in case_ids])
    order = sorted(set(patients.tolist()), key=lambda p: (patient_position(p, seed), p))
    if len(order) < folds:
        raise DataError(f"train.folds is {folds} but the training split holds {len(order)} patients; every fold "
                        f"needs one: lower train.folds (0 trains one network) or add cases.")
    fold_of = {p: i % folds for i, p in enumerate(order)}
    return np.array([fold_of[p] for p in patients], dtype=np.int64)


def train_members(params: TrainParams, train_set: Split, val_set: Split, seed: int, checkpoint_dir: Path, key: str,
                  slice_channels: int, on_epoch: Callable[[int, dict], None] | None = None,
                  ranks: Ranks | None = None, channel_group: int = 1,
                  lesions: LesionSelection | None = None) -> TrainResult:
    """One network (``train.folds`` 0: :func:`train_model` on the train and validation splits, as always), or an
    ensemble of ``train.folds`` members, each with its checkpoint ``<key>-fold<i>.pt`` in ``checkpoint_dir``.

    An ensemble's history holds every member's epochs with their ``fold``; its ``best_epoch`` is the first
    member's (each member's is in the history). ``on_epoch`` gets the members' metrics prefixed ``fold<i>/``.
    """
    single = dict(slice_channels=slice_channels, ranks=ranks, channel_group=channel_group, lesions=lesions)
    if params.folds == 0:
        return train_model(params, train_set, val_set, seed, member_checkpoints(checkpoint_dir, key, 0)[0],
                           on_epoch=on_epoch, key=key, **single)
    folds = member_folds(train_set.case_ids, seed, params.folds)
    members, history, best = [], [], []
    for i, checkpoint in enumerate(member_checkpoints(checkpoint_dir, key, params.folds)):
        held_out = folds == i
        own_val = train_set.subset(held_out)
        if not own_val.has_tumour():
            raise DataError(f"fold {i} of train.folds {params.folds} (its patients: "
                            f"{', '.join(sorted({patient_id(str(c)) for c in own_val.case_ids}))}) has no slice "
                            f"with tumour to choose its member's best epoch on; lower train.folds or add cases.")
        log.info("ensemble member for fold %d (folds 0 to %d): %d training slices, %d validation slices of fold %d",
                 i, params.folds - 1, int((~held_out).sum()), int(held_out.sum()), i)
        report = None if on_epoch is None else _prefixed(on_epoch, i)
        result = train_model(params, train_set.subset(~held_out), own_val, seed + i, checkpoint, on_epoch=report,
                             key=f"{key}-fold{i}", **single)
        members.append(result.model)
        history.extend({"fold": i, **row} for row in result.history)
        best.append(result.best_epoch)
    config = dataclasses.replace(members[0].config, members=params.folds)
    ensemble: Ensemble = Ensemble(config, members).eval()
    return TrainResult(ensemble, result.regions, history, best[0], result.device)


def member_checkpoints(checkpoint_dir: Path, key: str, folds: int) -> list[Path]:
    """Where a run of fingerprint ``key`` checkpoints: ``<key>.pt`` for one network, one file per member for an
    ensemble."""
    if folds == 0:
        return [Path(checkpoint_dir) / f"{key}.pt"]
    return [Path(checkpoint_dir) / f"{key}-fold{i}.pt" for i in range(folds)]


def _prefixed(on_epoch: Callable[[int, dict], None], fold: int) -> Callable[[int, dict], None]:
    return lambda epoch, metrics: on_epoch(epoch, {f"fold{fold}/{k}": v for k, v in metrics.items()})
