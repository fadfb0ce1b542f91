"""Recording a pipeline run in git, so that `dvc exp show`, `dvc metrics diff` and `dvc plots diff` have a
revision to compare the next experiment with (what `make demo` does at its end)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_BRANCH = "brats-seg-demo"
# What DVC expects in git after a run: the params, the lock, uncached metrics / plots / reports, and the
# .gitignore files DVC writes for its cached outputs.
RECORDED = ("params.yaml", "dvc.lock", "reports", "data/source.json")
_IDENTITY = ("-c", "user.name=brats-seg demo", "-c", "user.email=demo@brats-seg.invalid")


def _git(args: list[str], cwd: Path, identity: bool = False) -> subprocess.CompletedProcess:
    extra = list(_IDENTITY) if identity else []
    return subprocess.run(["git", *extra, *args], cwd=cwd, capture_output=True, text=True)


def record_run(workdir: str | Path, message: str, branch: str = DEMO_BRANCH) -> str | None:
    """Commit the pipeline's params, dvc.lock and reports on ``branch`` (created from HEAD if needed) and
    return the new commit, or None when there is nothing new to record or ``workdir`` is not a git
    repository. Files outside the pipeline's records are never staged."""
    cwd = Path(workdir)
    if _git(["rev-parse", "--is-inside-work-tree"], cwd).returncode != 0:
        log.info("%s is not a git repository: the run is not recorded", cwd.resolve())
        return None
    current = _git(["branch", "--show-current"], cwd).stdout.strip()
    if current != branch:
        exists = _git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd).returncode == 0
        switched = _git(["switch", branch] if exists else ["switch", "-c", branch], cwd)
        if switched.returncode != 0:
            log.warning("%s", _not_switched(branch, switched.stderr))
            return None
    paths = [p for p in RECORDED if (cwd / p).exists()]
    ignores = _git(["ls-files", "--others", "--modified", "--exclude-standard", "--", ":(glob)**/.gitignore"], cwd)
    _git(["add", "--", *paths, *ignores.stdout.split()], cwd)
    if _git(["diff", "--cached", "--quiet"], cwd).returncode == 0:
        log.info("nothing new to record: the run's params, lock and reports are already committed")
        return None
    identity = not _git(["config", "user.email"], cwd).stdout.strip()
    committed = _git(["commit", "-q", "-m", message], cwd, identity=identity)
    if committed.returncode != 0:
        log.warning("git commit failed (%s): the run is not recorded", committed.stderr.strip()[:200])
        return None
    return _git(["rev-parse", "HEAD"], cwd).stdout.strip()


def _not_switched(branch: str, stderr: str) -> str:
    """Why ``git switch BRANCH`` failed, in one sentence with what to do: usually this run's files (dvc.lock,
    reports) are untracked or changed here and the branch holds its own."""
    blocking = [line.strip() for line in stderr.splitlines() if line.startswith("\t")]
    if not blocking:
        return (f"the run is not recorded: git could not switch to branch {branch} "
                f"({(stderr.strip().splitlines() or ['git failed'])[-1]}).")
    named = ", ".join(blocking[:3]) + (f" and {len(blocking) - 3} more" if len(blocking) > 3 else "")
    return (f"the run is not recorded: git will not switch to branch {branch} because this run's {named} would "
            f"overwrite or be overwritten by the branch's own; its outputs are here in the workspace: to record runs "
            f"there, `git stash -u` (or commit them here), `git switch {branch}`, and run again.")
