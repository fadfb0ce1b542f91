"""Team servers for tests: a throwaway PostgreSQL and `mlflow server` on 127.0.0.1, and the README's commands."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.cohorts import PROJECT_ROOT
from tests.support.projects import bash_commands

MLFLOW_README = PROJECT_ROOT / "mlflow" / "README.md"


MLFLOW_TEAM_SECTION = "## A shared server for a team"


PG_OS_USER = "brats-pg"  # PostgreSQL refuses to run as root: as root, the test cluster runs as this system user


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class TeamProject:
    """A git + DVC project that ran the tiny pipeline against the team's MLflow server, committed, and pushed its
    data to the team's DVC remote (a local folder, the default layout)."""

    def __init__(self, path: Path, remote: Path, mlflow: TeamMlflow) -> None:
        self.path, self.remote, self.mlflow = path, remote, mlflow

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.mlflow.url}

