"""Shared fixtures: telemetry off, tiny synthetic cohorts, a local HTTP server, the real BraTS cases."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import threading
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


def run_cmd(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the project's virtualenv first on PATH (as `make` does)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own local store
    if (Path(cwd) / "src" / "brats_seg").is_dir():  # a copy of the project runs its own code, not the checkout's
        env["PYTHONPATH"] = str(Path(cwd) / "src")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_dvc_project(repo: Path, overrides: dict | None = None):
    """A fresh git + DVC repository at ``repo`` holding this project's pipeline with tiny params. Returns
    a function that rewrites params.yaml with more overrides; the repository path is ``fn.path``."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(PROJECT_ROOT / name, repo / name)
    for folder in ("stages", "src", "flows"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(PROJECT_ROOT / folder, repo / folder, ignore=ignore)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())

    def write_params(more: dict | None = None) -> None:
        merged = _merge(_merge(_merge(params, TINY_PARAMS), overrides or {}), more or {})
        (repo / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))

    write_params()
    run_cmd(["git", "init", "-q"], repo)
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
