"""The pipeline's outputs where dvc.yaml and params.yaml put them now, and which of them are the pipeline's own.

`dvc repro` deletes a stage's outputs before it runs the stage, whatever they hold, so a path in params.yaml that
names a folder of the user's (``base.raw_dir: data/my-cohort``) would lose it: :func:`check_output_folders`
refuses that in one sentence before anything runs (the ``source`` stage, first in every `dvc repro`, and the
flow call it). `brats-seg clean` (`make clean`) removes the rebuildable outputs and nothing a user made.

An output is the pipeline's own (:func:`is_own_output`) when it is absent; a folder carrying the project's marker
(:data:`~brats_seg.io.atomic.OUTPUT_MARKER`, which every folder output gets when a stage makes it), an empty one,
or one that dvc.lock records at that path; a file whose content is what dvc.lock records for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

from brats_seg.base_params import BaseParams
from brats_seg.config import load_section, read_params
from brats_seg.errors import ConfigError, UserError
from brats_seg.io.atomic import OUTPUT_MARKER, is_removable
from brats_seg.orchestration.dvc import dvc_stages
from brats_seg.orchestration.provenance import dvc_lock_outputs

# what the train stage writes in base.checkpoint_dir (brats_seg.io.checkpoint): <fingerprint>.pt, a member's
# <fingerprint>-fold<i>.pt, <fingerprint>.run.json, and an unfinished write's .<name>.<pid>.tmp
CHECKPOINT_FILE = re.compile(r"^\.?[0-9a-f]{16}(-fold\d+)?\.(pt|run\.json)(\.\d+\.tmp)?$")


@dataclasses.dataclass
class Cleaned:
    removed: list[str] = dataclasses.field(default_factory=list)
    kept: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
    notes: list[str] = dataclasses.field(default_factory=list)  # what is kept on purpose


def stage_outputs(root: str | Path, params: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """The outputs, metrics and plots of ``root``/dvc.yaml's stages but ``persist`` ones, in the file's order, each
    as (its path resolved with ``params``, by default ``root``/params.yaml; as dvc.yaml writes it, e.g.
    ``${base.raw_dir}``); two at one path are both listed."""
    root = Path(root)
    if not (root / "dvc.yaml").is_file():
        return []
    params = read_params(root / "params.yaml") if params is None else params
    found = []
    for stage in dvc_stages(root).values():
        for field in ("outs", "metrics", "plots"):
            for entry in stage.get(field) or []:
                path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
                if not (options or {}).get("persist"):
                    found.append((_resolve(str(path), params), str(path)))
    return found


def is_own_output(root: Path, rel: str, recorded: dict[str, str]) -> bool:
    """Whether ``root``/``rel`` is absent or the pipeline's own (see the module's docstring)."""
    path = root / rel
    if path.is_symlink():
        return False
    if path.is_dir():
        return is_removable(path) or recorded.get(Path(rel).as_posix(), "").endswith(".dir")
    return not path.exists() or recorded.get(Path(rel).as_posix()) == _md5(path)


def check_output_folders(root: str | Path = ".", params: dict[str, Any] | None = None) -> None:
    """Raise UserError (one sentence) when an output path of ``root``/dvc.yaml (none without one) holds a folder (or
    link) that is not the pipeline's own: `dvc repro` would delete it before the stage that writes there runs."""
    root = Path(root)
    recorded, outputs = dvc_lock_outputs(root / "dvc.lock"), stage_outputs(root, params)
    _check_distinct(outputs)
    for rel, written in outputs:
        path = root / rel
        if (path.is_dir() or path.is_symlink()) and not is_own_output(root, rel, recorded):
            key = _key(written)
            raise UserError(f"{key} is {rel}, a {'link' if path.is_symlink() else 'folder'} brats-seg did not write, "
                            f"and dvc repro deletes a stage's outputs before it runs; nothing was deleted: point {key} "
                            f"at a new or empty folder, or move what {rel} holds elsewhere.")


def _check_distinct(outputs: list[tuple[str, str]]) -> None:
    """Two outputs at one path, or one inside another: dvc repro of one stage would delete the other's."""
    seen: list[tuple[Path, str]] = []
    for rel, written in outputs:
        path = Path(rel)
        for other, other_written in seen:
            if path == other or path.is_relative_to(other) or other.is_relative_to(path):
                how = "the same path as" if path == other else "inside" if path.is_relative_to(other) else "around"
                raise UserError(f"{_key(written)} is {rel}, {how} {_key(other_written)} ({other}), and dvc repro "
                                f"deletes a stage's outputs before it runs; nothing was deleted: give "
                                f"{_key(written)} a path of its own.")
        seen.append((path, written))


def _key(written: str) -> str:
    """``base.raw_dir`` for ``${base.raw_dir}``, else how dvc.yaml names the output."""
    return written.strip("${}") if written.startswith("${") else f"dvc.yaml's output {written}"


def clean(root: str | Path = ".", what: str = "outputs") -> Cleaned:
    """Remove the rebuildable outputs (``outputs``: every stage output, the download stage's staging folders in
    ``base.cache_dir``), the training checkpoints in ``base.checkpoint_dir`` (``checkpoints``) or both (``all``),
    where each is the pipeline's own; returns what went, what stayed and why."""
    root = Path(root)
    params = read_params(root / "params.yaml")
    base = load_section(BaseParams, params, "base")
    done, cache = Cleaned(), root / base.cache_dir
    if what in ("outputs", "all"):
        recorded = dvc_lock_outputs(root / "dvc.lock")
        staging = [str(p.relative_to(root)) for p in sorted([cache / "extracted", *cache.glob("raw-*")])]
        for rel in dict.fromkeys([*(rel for rel, _ in stage_outputs(root, params)), *staging]):
            _remove(root, rel, recorded, done)
    if what in ("checkpoints", "all"):
        _remove_checkpoints(root, base.checkpoint_dir, done)
    elif (root / base.checkpoint_dir).is_dir() and any((root / base.checkpoint_dir).iterdir()):
        done.notes.append(f"kept: training checkpoints ({base.checkpoint_dir}; brats-seg clean checkpoints, or make "
                          f"clean-checkpoints, deletes them)")
    if what != "checkpoints":
        kept = [f"downloads ({Path(base.cache_dir) / 'downloads'})"] if (cache / "downloads").is_dir() else []
        kept += [base.source_manifest] if (root / base.source_manifest).is_file() else []
        kept += ["the MLflow store (make clean-tracking)"] if (root / "mlflow").is_dir() else []
        done.notes += [f"kept: {', '.join(kept)}"] if kept else []
    return done


def describe(done: Cleaned) -> str:
    """What :func:`clean` did, for people: what went, what stayed and why, and what is kept on purpose."""
    import textwrap

    lines = [textwrap.fill(f"removed {', '.join(done.removed)} (dvc repro rebuilds them; dvc checkout restores "
                           f"those DVC caches, git checkout those git tracks)", width=110, subsequent_indent="  ",
                           break_on_hyphens=False)
             if done.removed else "removed nothing: none was there"]
    lines += [f"kept {path}: {why}" for path, why in done.kept]
    return "\n".join(lines + done.notes)


def _resolve(text: str, params: dict[str, Any]) -> str:
    def value(match: re.Match) -> str:
        node: Any = params
        for part in match.group(1).strip().split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"dvc.yaml names ${{{match.group(1)}}}, which params.yaml does not have; add it "
                                  f"to params.yaml (see the project's own).")
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def _remove(root: Path, rel: str, recorded: dict[str, str], done: Cleaned) -> None:
    path = root / rel
    if not path.exists() and not path.is_symlink():
        return
    if not is_own_output(root, rel, recorded):
        why = ("a link, not a file or folder the pipeline writes" if path.is_symlink() else
               f"a folder brats-seg did not write (no {OUTPUT_MARKER} in it)" if path.is_dir() else
               "not the file dvc.lock records (changed since the pipeline wrote it, or written by someone else)")
        done.kept.append((rel, why))
        return
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    done.removed.append(rel)


def _remove_checkpoints(root: Path, checkpoint_dir: str, done: Cleaned) -> None:
    folder = root / checkpoint_dir
    if not folder.is_dir() or folder.is_symlink():
        return
    others = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.is_symlink() and CHECKPOINT_FILE.match(path.name):
            path.unlink()
        else:
            others.append(path.name)
    if others:
        done.kept.append((checkpoint_dir, f"the checkpoints went; {', '.join(others)} is not one"))
    else:
        folder.rmdir()
        done.removed.append(checkpoint_dir)


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
