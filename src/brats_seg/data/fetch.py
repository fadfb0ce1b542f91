"""HTTP(S) downloads that resume, retry with backoff and verify a checksum; Kaggle credentials."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from brats_seg.errors import DownloadError
from brats_seg.progress import progress

log = logging.getLogger(__name__)

_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class _Incomplete(Exception):
    """The server closed the connection before sending every byte."""


def fetch_url(url: str, dest: str | Path, md5: str | None = None, retries: int = 5, backoff_s: float = 1.0,
              timeout_s: float = 60.0, auth: tuple[str, str] | None = None, chunk: int = 1 << 16) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with HTTP Range requests.

    A transfer that breaks off is retried up to ``retries`` times with exponential backoff, continuing
    where it stopped. With ``md5`` the file is verified before it is moved to ``dest``; a mismatch deletes
    the partial file and raises DownloadError. An existing ``dest`` that matches ``md5`` is reused.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5.lower()):
        log.info("reusing %s (already downloaded)", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout_s, auth, chunk)
            break
        except (*_RETRYABLE, _Incomplete) as exc:
            if attempt == retries:
                raise DownloadError(f"download of {url} failed after {retries + 1} attempts ({exc}); the "
                                    f"partial file {part} is kept, rerun to resume.") from None
            wait = backoff_s * 2**attempt
            log.warning("download interrupted (%s); resuming in %.1f s (attempt %d of %d)", exc, wait,
                        attempt + 2, retries + 1)
            time.sleep(wait)
    if md5 is not None:
        got = file_md5(part)
        if got != md5.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(f"checksum mismatch for {url}: expected md5 {md5.lower()}, got {got}; the "
                                f"download was deleted. Retry, or correct the expected md5 in params.yaml.")
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, timeout_s: float, auth: tuple[str, str] | None, chunk: int) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s, auth=auth) as resp:
        if resp.status_code == 416 and offset:
            log.info("server reports %s complete at %d bytes", part.name, offset)
            return
        if resp.status_code >= 500:
            raise requests.ConnectionError(f"server error {resp.status_code}")
        if resp.status_code >= 400:
            raise DownloadError(f"download of {url} was refused with HTTP {resp.status_code} {resp.reason}; "
                                f"check the URL and any credentials.")
        resumed = resp.status_code == 206 and _range_start(resp.headers.get("Content-Range")) == offset
        if offset and not resumed:
            log.info("server does not resume; downloading %s from the start", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        written = offset
        with open(part, "ab" if resumed else "wb") as out, progress(
            total=total, initial=offset, unit="B", unit_scale=True, desc=f"download {part.name[:-5]}"
        ) as bar:
            for block in resp.iter_content(chunk_size=chunk):
                out.write(block)
                written += len(block)
                bar.update(len(block))
        if total is not None and written < total:
            raise _Incomplete(f"received {written} of {total} bytes")


def _range_start(content_range: str | None) -> int | None:
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[6:].split("-", 1)[0])
    except ValueError:
        return None


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file (the checksum that BraTS mirrors and the Decathlon publish)."""
    digest = hashlib.md5()  # noqa: S324 - integrity check against a published md5, not security
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def kaggle_credentials(environ: Mapping[str, str] | None = None, home: str | Path | None = None) -> tuple[str, str]:
    """Kaggle username and key from KAGGLE_USERNAME / KAGGLE_KEY, else from kaggle.json.

    kaggle.json is looked for in $KAGGLE_CONFIG_DIR, then ``~/.kaggle``. Raises DownloadError with what to
    do when neither is there.
    """
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    folder = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path(home or Path.home()) / ".kaggle"
    token = folder / "kaggle.json"
    if token.is_file():
        try:
            data = json.loads(token.read_text())
            return str(data["username"]), str(data["key"])
        except (ValueError, KeyError):
            raise DownloadError(f"{token} is not a valid Kaggle token (it needs \"username\" and \"key\"); "
                                f"download a new one from kaggle.com, Settings, API.") from None
    raise DownloadError("Kaggle credentials are missing: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json "
                        f"in {folder} (kaggle.com, Settings, API, Create New Token).")
