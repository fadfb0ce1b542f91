"""Training checkpoints: model, optimiser and every RNG state, written atomically, read without unpickling.

Everything in a checkpoint is a tensor, a number, a string or a container of those, so it loads with
``torch.load(..., weights_only=True)``: a crafted file cannot run code here.

A run's checkpoint is ``<checkpoint_dir>/<fingerprint>.pt`` (16 hex digits) beside ``<fingerprint>.run.json`` (its
MLflow run). Checkpoints of other fingerprints (interrupted runs of other settings, data or code; about 125 MB each
at full size) are pruned when a run completes: the :data:`KEEP_OTHER_CHECKPOINTS` most recently written stay, so
that an interrupted experiment can still be resumed, and only files named as the project names them are touched.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_seg.errors import UserError
from brats_seg.io.atomic import atomic_path

log = logging.getLogger(__name__)

KEEP_OTHER_CHECKPOINTS = 2
# <key>.pt, <key>.run.json, and the temporary file of an unfinished write: .<key>.pt.<pid>.tmp (io.atomic)
# <fingerprint>.pt, an ensemble member's <fingerprint>-fold<i>.pt (train.folds), and the run's <fingerprint>.run.json
_FILE = re.compile(r"^(?P<key>[0-9a-f]{16})(?:-fold\d+)?\.(?:pt|run\.json)$")
_PARTIAL = re.compile(r"^\.(?P<key>[0-9a-f]{16})(?:-fold\d+)?\.(?:pt|run\.json)\.(?P<pid>\d+)\.tmp$")


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states and ``generator``'s, as plain values and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with torch.save, atomically and byte-reproducibly: the same state gives the same bytes
    (torch names the archive's folder after the file, and the temporary file's name differs per process, so
    the archive is built in memory under torch's fixed name first)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none. Never unpickles arbitrary objects: a file
    that holds anything but tensors and plain values is refused with one sentence."""
    path = Path(path)
    if not path.is_file():
        return None
    return load_weights_file(path)


def load_weights_file(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, with a :class:`UserError` for files that are not plain
    weights (truncated, not a torch file, or a pickle that would run code)."""
    try:
        with warnings.catch_warnings():  # torch's notes on a crafted file's pickle protocol: the sentence below says it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the callable it refused to import; a bare pickle stream (any protocol) is read here instead
        crafted = "unsupported global" in str(exc).lower() or _calls_code(path)
        why = ("it holds Python objects other than tensors and plain values, which could run code" if crafted
               else "it is not a torch weights file")
    except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the file is not usable
        why = f"it is not a complete torch weights file ({type(exc).__name__})"
    raise UserError(f"{path} was refused: {why}; use a model or checkpoint written by brats-seg.")


# Pickle opcodes that import a callable or call one: what makes unpickling run code.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE"}


def _calls_code(path: Path, limit: int = 1 << 26) -> bool:
    """Whether ``path`` is a pickle stream (of any protocol) that would import or call something when unpickled;
    read with pickletools, which parses opcodes and runs none."""
    import pickletools

    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
        return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - not a pickle stream: nothing in it would run
        return False


def prune_checkpoints(folder: str | Path, keep: int = KEEP_OTHER_CHECKPOINTS) -> list[Path]:
    """Remove the checkpoints in ``folder`` but the ``keep`` most recently written ones (by their ``.pt`` file),
    with their run files; also run files without a checkpoint (nothing can resume from them) and temporary files
    whose writer is gone. Only files named as this module names them are touched. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files: dict[str, list[Path]] = {}
    partial: list[Path] = []
    for path in folder.iterdir():
        if (match := _FILE.match(path.name)) and path.is_file() and not path.is_symlink():
            files.setdefault(match["key"], []).append(path)
        elif (match := _PARTIAL.match(path.name)) and path.is_file() and not _alive(int(match["pid"])):
            partial.append(path)
    weights = {k: [p for p in paths if p.suffix == ".pt"] for k, paths in files.items()}
    resumable = sorted((k for k in files if weights[k]),
                       key=lambda k: max(p.stat().st_mtime_ns for p in weights[k]), reverse=True)
    kept = set(resumable[:keep])
    removed = sorted([p for k, paths in files.items() if k not in kept for p in paths] + partial)
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d file(s) of abandoned training checkpoints from %s (kept the %d most recent)",
                 len(removed), folder, len(kept))
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a temporary file of a live writer is left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
