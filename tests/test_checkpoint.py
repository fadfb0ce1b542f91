"""Checkpoints of abandoned fingerprints are pruned when a training run completes; nothing else is touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from brats_seg.io.checkpoint import KEEP_OTHER_CHECKPOINTS, prune_checkpoints, save_checkpoint


def _checkpoint(folder: Path, key: str, age_s: int, run_file: bool = True) -> list[Path]:
    """A checkpoint written ``age_s`` seconds ago under fingerprint ``key`` (and its run file)."""
    paths = [save_checkpoint(folder / f"{key}.pt", {"epoch": 1, "fingerprint": key, "w": torch.zeros(3)})]
    if run_file:
        paths.append(folder / f"{key}.run.json")
        paths[-1].write_text(json.dumps({"run_id": key}))
    stamp = 1_700_000_000 - age_s
    for path in paths:
        os.utime(path, (stamp, stamp))
    return paths


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_only_the_most_recent_other_checkpoints_stay_and_nothing_the_project_did_not_name_is_touched(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    newest = _checkpoint(folder, "a" * 16, age_s=10)
    second = _checkpoint(folder, "b" * 16, age_s=20, run_file=False)
    old = _checkpoint(folder, "c" * 16, age_s=30) + _checkpoint(folder, "d" * 16, age_s=40)
    orphan_run = folder / f"{'e' * 16}.run.json"  # a run file whose checkpoint is gone: nothing can resume from it
    orphan_run.write_text("{}")
    killed_write = folder / f".{'f' * 16}.pt.{_dead_pid()}.tmp"  # what a write killed half-way leaves
    killed_write.write_bytes(b"half")
    live_write = folder / f".{'f' * 16}.pt.{os.getpid()}.tmp"  # a writer still at it
    live_write.write_bytes(b"half")
    users = [folder / name for name in ("notes.txt", "best.pt", f"{'a' * 16}.pt.bak", f"{'A' * 16}.pt")]
    for path in users:
        path.write_text("mine")
    (folder / f"{'9' * 16}.pt").mkdir()  # a folder of that name is not a checkpoint file
    link = folder / f"{'8' * 16}.pt"
    link.symlink_to(tmp_path / "elsewhere.pt")

    removed = prune_checkpoints(folder)
    assert KEEP_OTHER_CHECKPOINTS == 2
    assert removed == sorted([*old, orphan_run, killed_write])
    assert all(p.is_file() for p in [*newest, *second, live_write, *users])
    assert (folder / f"{'9' * 16}.pt").is_dir() and link.is_symlink()
    assert prune_checkpoints(folder) == []  # settled
    assert prune_checkpoints(tmp_path / "none") == []
    assert [p.name for p in prune_checkpoints(folder, keep=0)] == sorted(p.name for p in [*newest, *second])


def test_a_completed_training_run_prunes_abandoned_checkpoints(slices, tmp_path, monkeypatch):
    """The train stage's runner, in process: two abandoned checkpoints of other fingerprints and the one of an
    older interrupted run; after the run, the two most recent stay (resumable) and its own is gone."""
    from brats_seg.base_params import BaseParams
    from brats_seg.runners.train import train_stage
    from brats_seg.training.params import TrainParams

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copytree(slices, tmp_path / "data" / "slices")
    folder = tmp_path / "data" / "cache" / "checkpoints"
    folder.mkdir(parents=True)
    kept = _checkpoint(folder, "1" * 16, age_s=10) + _checkpoint(folder, "2" * 16, age_s=20)
    oldest = _checkpoint(folder, "3" * 16, age_s=30)
    # no raw data here: the post-processing chosen on the validation patients' own grids is another test's subject
    params = TrainParams(epochs=1, batch_size=8, lr=3e-3, base=8, depth=2, threads=1, device="cpu", postprocess=False,
                         threshold=0.5)
    report = train_stage(params, BaseParams(seed=0))
    assert report["epochs"] == 1 and Path("models/unet.pt").is_file()
    assert sorted(folder.iterdir()) == sorted(kept) and not any(p.exists() for p in oldest)
