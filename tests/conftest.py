"""Shared fixtures: telemetry off, tiny synthetic cohorts, a local HTTP server, the real BraTS cases, and the team
servers (PostgreSQL, `mlflow server`) with one tiny pipeline run against them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

for _key, _value in {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(_key, _value)
# dvc, and the `python` its stages run, come from this interpreter's environment (as under `make`)
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

from brats_seg.data.layouts import write_case  # noqa: E402
from brats_seg.data.synthetic import make_case  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"
TINY_SHAPE = (48, 48, 24)
# A patient's split is its hash position alone (docs/design.md), so a tiny cohort can leave a split empty, which the
# slice stage refuses. Under this seed BraTS20_Synthetic_001, _002 and _003 hash to test, val and train (0.7/0.15/0.15),
# so every synthetic cohort of three or more cases numbered from 1 fills all three splits, as does 1, 2, 4, 5(, 6)
# (tests/test_dask.py quarantines _003); the tiny pipeline's one tumour-free case (of 5, at this seed: _004) is in
# train. tests/data/test_slicing.py checks these claims.
COHORT_SEED = 132


def write_synthetic_cohort(root: Path, n: int = 4, seed: int = 0, shape: tuple[int, int, int] = TINY_SHAPE,
                           tumour_free: tuple[int, ...] = ()) -> list[str]:
    """Write ``n`` tiny synthetic cases in the canonical layout under ``root``; returns their ids."""
    ids = []
    for i in range(1, n + 1):
        case = make_case(i, seed, shape, tumour=i not in tumour_free)
        write_case(root, case.case_id, case.images, case.seg, case.affine)
        ids.append(case.case_id)
    return ids


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Path:
    """Four 48 x 48 x 24 synthetic cases (case 4 without tumour) in canonical layout."""
    root = tmp_path / "raw"
    write_synthetic_cohort(root, 4, tumour_free=(4,))
    return root


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real BraTS cases not found at {REAL_DATA} (only present on the team's machines)")
    return REAL_DATA


class FileServer:
    """A tiny HTTP server on 127.0.0.1 serving bytes at paths, honouring Range requests.

    ``cut_first[path] = n``: the first ``n`` GETs of ``path`` send half the body then drop the connection.
    ``auth = (user, key)``: every request must carry that HTTP basic auth, else 401.
    HEAD answers with the validators a GET sends too: ETag (a hash of the body), Last-Modified
    (``modified[path]``, else a fixed date) and Content-Length; ``no_head`` paths answer HEAD with 405.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_first: dict[str, int] = {}
        self.auth: tuple[str, str] | None = None
        self.modified: dict[str, str] = {}
        self.no_head: set[str] = set()
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _allowed(self) -> bytes | None:
                """The body at this path, or None after answering 401 / 404."""
                server.requests.append({"method": self.command, "path": self.path,
                                        "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")})
                if server.auth:
                    token = base64.b64encode(":".join(server.auth).encode()).decode()
                    if self.headers.get("Authorization") != f"Basic {token}":
                        self.send_error(401)
                        return None
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                return body

            def _validators(self, body: bytes) -> None:
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()[:16]}"')
                self.send_header("Last-Modified", server.modified.get(self.path, "Mon, 01 Jan 2024 00:00:00 GMT"))

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's API
                body = self._allowed()
                if body is None:
                    return
                if self.path in server.no_head:
                    self.send_error(405)
                    return
                self.send_response(200)
                self._validators(body)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802 - http.server's API
                body = self._allowed()
                if body is None:
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self._validators(body)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cut_first.get(self.path, 0) > 0:
                    server.cut_first[self.path] -= 1
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def file_server():
    server = FileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


TINY_PARAMS = {
    "base": {"seed": COHORT_SEED},  # the five cases fill train, val and test (see COHORT_SEED)
    "download": {"workers": 1, "synthetic": {"n_cases": 5, "shape": list(TINY_SHAPE), "tumour_free_fraction": 0.2}},
    "validate": {"workers": 1},
    "slice": {"size": 32, "workers": 1},
    "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "base": 8, "depth": 2, "threads": 1},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_cmd(args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a command with the project's virtualenv first on PATH (as `make` does). ``env`` adds variables (applied
    last: ``{"MLFLOW_TRACKING_URI": url}`` points the command at a tracking server instead of the local store)."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full_env.pop("MLFLOW_TRACKING_URI", None)  # the project's own local store, unless `env` names a server
    if (Path(cwd) / "src" / "brats_seg").is_dir():  # a copy of the project runs its own code, not the checkout's
        full_env["PYTHONPATH"] = str(Path(cwd) / "src")
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def slices(tmp_path_factory) -> Path:
    """The slice stage's output for 8 tiny synthetic cases (one without tumour), split 0.6/0.2/0.2; read only."""
    from brats_seg.data.slicing import SliceParams, run_slice
    from brats_seg.data.validation import ValidateParams, read_manifest, run_validate

    root = tmp_path_factory.mktemp("cohort")
    write_synthetic_cohort(root / "raw", 8, shape=(64, 64, 24), tumour_free=(8,))
    run_validate(ValidateParams(workers=1), root / "raw", root / "m.parquet", root / "rep", root / "v.json")
    run_slice(SliceParams(size=32, workers=1, keep_empty_fraction=0.2, split=(0.6, 0.2, 0.2)), root / "raw",
              read_manifest(root / "m.parquet"), root / "slices", seed=0)
    return root / "slices"


# The project's git ignore rules: patient data (every DVC output under data/, models/, pictures of slices) is ignored
# on every branch, not only where DVC wrote its own .gitignore files.
IGNORE_FILES = (".gitignore", "data/.gitignore", "data/validated/.gitignore", "models/.gitignore",
                "reports/.gitignore")


def make_dvc_project(repo: Path, overrides: dict | None = None):
    """A fresh git + DVC repository at ``repo`` holding this project's pipeline with tiny params. Returns
    a function that rewrites params.yaml with more overrides; the repository path is ``fn.path``."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "prefect.toml", *IGNORE_FILES):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, repo / name)
    for folder in ("stages", "src", "flows"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(PROJECT_ROOT / folder, repo / folder, ignore=ignore)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())

    def write_params(more: dict | None = None) -> None:
        merged = _merge(_merge(_merge(params, TINY_PARAMS), overrides or {}), more or {})
        (repo / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))

    write_params()
    run_cmd(["git", "init", "-q", "-b", "main"], repo)
    run_cmd(["git", "config", "user.email", "test@example.com"], repo)
    run_cmd(["git", "config", "user.name", "test"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    run_cmd(["dvc", "config", "core.analytics", "false"], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "pipeline"], repo)
    write_params.path = repo  # type: ignore[attr-defined]
    return write_params


@pytest.fixture
def dvc_project(tmp_path: Path):
    """A fresh git + DVC repository holding this project's pipeline, with tiny params."""
    return make_dvc_project(tmp_path / "project")


# --- team mode: real servers on 127.0.0.1 (tests/test_team_*.py) ---------------------------------------------------
# A PostgreSQL cluster and the team's `mlflow server` (as mlflow/README.md starts it) for the whole session, and one
# tiny pipeline run against them (`team_project`), shared by the MLflow, DVC remote and Prefect team tests.

MLFLOW_README = PROJECT_ROOT / "mlflow" / "README.md"
MLFLOW_TEAM_SECTION = "## A shared server for a team"
PG_OS_USER = "brats-pg"  # PostgreSQL refuses to run as root: as root, the test cluster runs as this system user


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require(found: bool, what: str) -> None:
    """Skip a test that needs something missing here, saying what; under CI (CI=true) fail instead, since CI must
    run every test and `make test` installs what they need."""
    if found:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what}; CI runs every test (make test installs it)", pytrace=False)
    pytest.skip(what)


def bash_commands(markdown: str) -> list[str]:
    """Command lines of the ```bash blocks of ``markdown``, comments stripped (as tests/test_readme.py reads them)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def mlflow_team_commands() -> list[str]:
    """The commands of mlflow/README.md's team section, in order."""
    text = MLFLOW_README.read_text()
    assert MLFLOW_TEAM_SECTION in text, f"mlflow/README.md has no section {MLFLOW_TEAM_SECTION!r}"
    return bash_commands(text.split(MLFLOW_TEAM_SECTION, 1)[1].split("\n## ", 1)[0])


class Service:
    """A server process started for tests in a session of its own, its output in ``log``; ``stop`` signals its whole
    process group, so that children (uvicorn workers, postgres backends) go with it."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stop_signal: int = signal.SIGTERM) -> None:
        self.name, self.log, self.stop_signal = name, log, stop_signal
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_until(self, ready, what: str, timeout: float = 180.0) -> None:
        """Poll ``ready()`` until it is true; fail with the log's tail when the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not {what} after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.5)

    def wait_for_http(self, url: str, timeout: float = 180.0) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        self.wait_until(answers, f"answering {url}", timeout)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, self.stop_signal)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


def postgres_bin_dir() -> Path | None:
    """The folder of PostgreSQL's server binaries: initdb's on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return debian[-1].parent if debian else None


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port`` with password authentication; ``env`` points libpq
    clients (psql, createdb) at it as its superuser, as `sudo -u postgres` does on a server."""

    superuser, password = "postgres", "superuser-of-a-test-cluster"  # as Debian names it

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin_dir, self.port = root, bin_dir, free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_OS_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                                "/usr/sbin/nologin", PG_OS_USER], check=True, capture_output=True)
            shutil.chown(root, PG_OS_USER, PG_OS_USER)
            self.as_user = ["setpriv", f"--reuid={PG_OS_USER}", f"--regid={PG_OS_USER}", "--init-groups"]
        (root / "pwfile").write_text(self.password)
        if self.as_user:
            shutil.chown(root / "pwfile", PG_OS_USER, PG_OS_USER)
        initdb = subprocess.run([*self.as_user, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U",
                                 self.superuser, "--pwfile", str(root / "pwfile"), "--auth=scram-sha-256", "-E", "UTF8",
                                 "--no-locale", "-N"], capture_output=True, text=True, cwd=root)
        assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}{initdb.stderr}"
        self.service = Service("postgres", [
            *self.as_user, str(bin_dir / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1",
            "-p", str(self.port), "-k", str(root), "-c", "fsync=off", "-c", "full_page_writes=off"],
            root / "postgres.log", cwd=root, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        self.service.wait_until(self._ready, "accepting connections", timeout=60)

    def _ready(self) -> bool:
        return subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True).returncode == 0

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": self.superuser,
                "PGPASSWORD": self.password, "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster for the session (Debian's `postgresql` server binaries; make test installs them)."""
    bin_dir = postgres_bin_dir()
    require(bin_dir is not None and (bin_dir / "postgres").is_file(),
            "PostgreSQL's server binaries (initdb, postgres) are not installed: apt-get install -y postgresql")
    root = Path(tempfile.mkdtemp(prefix="brats-pg-"))  # not under pytest's tmp: that is private to this user
    try:
        server = Postgres(root, bin_dir)
        try:
            yield server
        finally:
            server.service.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


class TeamMlflow:
    """The team's tracking server, started as mlflow/README.md's team section says (see ``team_mlflow``)."""

    def __init__(self, port: int, artifacts: Path, postgres: Postgres, service: Service, ran: list[str]) -> None:
        self.port, self.artifacts, self.postgres, self.service, self.ran = port, artifacts, postgres, service, ran
        self.url = f"http://127.0.0.1:{port}"

    def here(self, command: str) -> str:
        """A README command with this server's port in place of the README's 5000."""
        return command.replace("127.0.0.1:5000", f"127.0.0.1:{self.port}")


# mlflow/README.md's team section, server side: the commands that set up and start the server, run by `team_mlflow`
# on the test cluster (`sudo -u postgres` becomes the cluster's superuser through PG* variables, ~ a folder of the
# test's own, 5432 the cluster's port, /srv/mlflow/artifacts a temporary folder).
MLFLOW_SERVER_SIDE = ("sudo -u postgres ", "(umask 077 && echo ", "make mlflow-server")
MLFLOW_EXEMPT = {"sudo apt-get install -y postgresql": "installs the system package; make test installs the same "
                                                        "one when initdb is missing, and the tests start their own "
                                                        "cluster with it"}


@pytest.fixture(scope="session")
def team_mlflow(postgres, tmp_path_factory):
    """`mlflow server` on PostgreSQL with proxied artifacts, on 127.0.0.1, started by mlflow/README.md's commands."""
    root = tmp_path_factory.mktemp("team-mlflow")
    home, artifacts, port = root / "home", root / "artifacts", free_port()
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}  # the server's user: no PG* variables, its password is in ~/.pgpass
    service, ran = None, []
    try:
        for command in mlflow_team_commands():
            if not command.startswith(MLFLOW_SERVER_SIDE):
                continue
            here = (command.removeprefix("sudo -u postgres ").replace("127.0.0.1:5432", f"127.0.0.1:{postgres.port}")
                    .replace("/srv/mlflow/artifacts", str(artifacts)))
            ran.append(command)
            if command.startswith("make mlflow-server"):
                assert service is None, "mlflow/README.md starts the server twice"
                # `-o .venv/.installed`: the venv is this one (make test set it up); 1 worker on a 2-core machine
                here = here.replace("make ", "make -o .venv/.installed ", 1) + f" PORT={port} WORKERS=1"
                service = Service("mlflow server", ["bash", "-c", f"exec {here}"], root / "mlflow.log", env=env,
                                  cwd=PROJECT_ROOT)
                continue
            proc = subprocess.run(["bash", "-c", here], env={**env, **postgres.env}, capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 0, f"`{command}` (run as `{here}`) failed:\n{proc.stdout}{proc.stderr}"
        assert service is not None, "mlflow/README.md's team section never starts the server (make mlflow-server)"
        service.wait_for_http(f"http://127.0.0.1:{port}/health")
        yield TeamMlflow(port, artifacts, postgres, service, ran)
    finally:
        if service is not None:
            service.stop()


class TeamProject:
    """A git + DVC project that ran the tiny pipeline against the team's MLflow server, committed, and pushed its
    data to the team's DVC remote (a local folder, the default layout)."""

    def __init__(self, path: Path, remote: Path, mlflow: TeamMlflow) -> None:
        self.path, self.remote, self.mlflow = path, remote, mlflow

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.mlflow.url}


@pytest.fixture(scope="session")
def team_project(team_mlflow, tmp_path_factory) -> TeamProject:
    """One tiny `dvc repro` (1 epoch) with MLFLOW_TRACKING_URI at the team server, then `git commit` and `dvc push` to
    a folder remote: shared by tests/test_team_*.py, which clone it and must not change its git history."""
    root = tmp_path_factory.mktemp("team")
    repo = make_dvc_project(root / "origin", {"train": {"epochs": 1}, "promote": {"min_dice": 0.0}}).path
    shutil.copy(PROJECT_ROOT / "prefect.yaml", repo / "prefect.yaml")
    remote = root / "team-share" / "dvc" / "brats-seg"
    run_cmd(["dvc", "remote", "add", "-d", "team", str(remote)], repo)
    run_cmd(["git", "add", "prefect.yaml", ".dvc/config"], repo)
    run_cmd(["git", "commit", "-qm", "team setup: Prefect deployments, DVC remote"], repo)
    project = TeamProject(repo, remote, team_mlflow)
    run_cmd(["dvc", "repro"], repo, env=project.env, timeout=900)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "tiny pipeline run"], repo)
    run_cmd(["dvc", "push"], repo, timeout=300)
    return project
