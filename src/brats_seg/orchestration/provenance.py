"""Where an artifact came from: the git commit, the DVC-recorded hashes of the data, and the project code
a stage runs (its import closure inside the project, hashed file by file)."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

from brats_seg.errors import ConfigError

# The project's import roots: stages/ and flows/ at the top, the library under src/ (a checkout with an
# editable install, as `make setup` makes; otherwise the current directory is taken as the checkout).
_CHECKOUT = Path(__file__).resolve().parents[3]  # src/brats_seg/orchestration/provenance.py -> the checkout
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "src" / "brats_seg").is_dir() else Path.cwd()
IMPORT_ROOTS = (PROJECT_ROOT, PROJECT_ROOT / "src")
# What made a model: the stages from download to train (their code shapes the data and the weights).
MODEL_STAGES = ("stages.download", "stages.validate", "stages.slice", "stages.train")
# What scores a model on its test cases (the evaluate stage and the promotion's re-score share it), and what turns
# a case into the model's input: recorded scores compare only when made by the same code.
EVAL_CODE = ("brats_seg.evaluation.evaluate",)
PREPROCESS_CODE = ("brats_seg.data.preprocess",)


def git_state(repo: str | Path = ".") -> dict[str, str]:
    """``{"commit": sha or "unknown", "dirty": "true"/"false"}`` for the repository at ``repo``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(bool(status.strip())).lower()}


def read_dvc_file(path: str | Path, fix: str) -> object:
    """dvc.yaml or dvc.lock as DVC writes it (PyYAML's reading: an md5 stays a string); None without the file, and
    one sentence, ending in ``fix``, for a file that is not YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); {fix}.") from None


def dvc_lock_outputs(lock: str | Path = "dvc.lock") -> dict[str, str]:
    """``{path: md5}`` of every output dvc.lock records (a folder's md5 ends in ``.dir``); {} without the file."""
    data = read_dvc_file(lock, f"restore it (git checkout -- {Path(lock).name}) or rebuild it (dvc commit -f)")
    data = data if isinstance(data, dict) else {}
    return {Path(out["path"]).as_posix(): out["md5"] for stage in (data.get("stages") or {}).values()
            if isinstance(stage, dict) for out in stage.get("outs") or []
            if isinstance(out, dict) and isinstance(out.get("md5"), str) and isinstance(out.get("path"), str)}


def dvc_lock_hashes(paths: dict[str, str], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """``{name: md5}`` of the DVC outputs at ``paths`` (``{name: path}``) as recorded in dvc.lock.

    Paths that dvc.lock does not record (yet) are left out.
    """
    recorded = dvc_lock_outputs(lock)
    return {name: recorded[Path(path).as_posix()] for name, path in paths.items() if Path(path).as_posix() in recorded}


def module_file(name: str, roots: Iterable[Path] = IMPORT_ROOTS) -> Path | None:
    """The source file of project module ``name`` (``pkg/mod.py`` or ``pkg/__init__.py``), or None when
    the module is not part of the project (the standard library, a third-party package)."""
    parts = name.split(".")
    for root in roots:
        base = Path(root).joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported_names(path: Path, roots: tuple[Path, ...]) -> set[str]:
    """Every module name an ``import`` statement of ``path`` may load, function-level imports included.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (c may be a submodule); relative imports are resolved
    against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path, roots)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _package_of(path: Path, roots: tuple[Path, ...]) -> str:
    for root in roots:
        if path.is_relative_to(root):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1]
            return ".".join(parts)
    return ""


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a submodule runs its packages' ``__init__`` too."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.cache
def import_closure(*modules: str, roots: tuple[Path, ...] = IMPORT_ROOTS) -> tuple[Path, ...]:
    """The project files (under ``roots``) that importing ``modules`` (dotted names) loads, transitively.

    Found statically from ``import`` statements (including imports inside functions), so the closure is a
    superset of what one run executes: exactly what a stage's DVC ``deps`` must list. Sorted.
    """
    seen: set[Path] = set()
    todo = [n for m in modules for n in _with_parents(m)]
    while todo:
        path = module_file(todo.pop(), roots)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(n for name in _imported_names(path, roots) for n in _with_parents(name))
    return tuple(sorted(seen))


def code_manifest(modules: Iterable[str] = MODEL_STAGES, roots: tuple[Path, ...] = IMPORT_ROOTS,
                  base: Path = PROJECT_ROOT) -> dict[str, str]:
    """``{file relative to ``base``: sha256[:16]}`` over the import closure of ``modules`` under ``roots``."""
    files = import_closure(*modules, roots=roots)
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in files}


def code_digest(manifest: dict[str, str]) -> str:
    """One digest for a :func:`code_manifest`."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def eval_code_digest() -> str:
    """The digest of the code that scores a model on its test cases (:data:`EVAL_CODE`'s import closure)."""
    return code_digest(code_manifest(EVAL_CODE))
