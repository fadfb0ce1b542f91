"""Tiny synthetic cohorts and a local HTTP server that serves them (downloads are tested against it)."""

from __future__ import annotations

import base64
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from brats_seg.data.layouts import write_case
from brats_seg.data.synthetic import make_case

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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

