"""The source check: a manifest of what the download stage would fetch, so that DVC reruns download only
when the source changed.

DVC stage ``source`` (``always_changed``) writes this manifest and ``download`` depends on it. While the
source is unchanged the manifest is byte-identical (sorted keys, nothing time-dependent of ours) and is not
rewritten, so ``dvc repro`` skips download and every stage after it. What describes each source:

* ``synthetic``: the generation parameters and seed (the cases follow from them);
* ``local`` folder: every NIfTI file download would read, by relative name, with size and SHA-256. A hash
  is reused from ``<cache_dir>/source-hashes.json`` while the file's (path, size, mtime, ctime, inode,
  device) is unchanged, so an unchanged folder costs one ``stat`` per file;
* ``local`` archive: its size and SHA-256 (same cache);
* ``url``: the configured md5 and the server's validators (ETag, Last-Modified, Content-Length);
* ``kaggle``: the dataset's version number, last update and size from the Kaggle API, else the validators
  of its download URL.

A remote that cannot be reached (no connection, timeout, server error) keeps the previous manifest of the
same source, with a warning: an offline scheduled run then skips instead of failing. Without a previous
manifest the stage fails with one sentence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import requests

from brats_seg.data.fetch import kaggle_credentials
from brats_seg.data.layouts import refuse_outside_links, walk_nifti
from brats_seg.data.sources import DownloadParams, KaggleSource, UrlSource, local_source_path
from brats_seg.errors import DownloadError
from brats_seg.io.atomic import atomic_path
from brats_seg.progress import progress

log = logging.getLogger(__name__)

HASH_CACHE = "source-hashes.json"
VALIDATORS = {"ETag": "etag", "Last-Modified": "last_modified", "Content-Length": "content_length"}
KAGGLE_VERSION_FIELDS = {"currentVersionNumber": "version", "lastUpdated": "last_updated", "totalBytes": "bytes"}


class SourceUnreachable(Exception):
    """The remote could not be asked (no connection, timeout, server error); the message says why."""


def check_source(params: DownloadParams, manifest_path: str | Path, raw_dir: str | Path, cache_dir: str | Path,
                 seed: int) -> dict:
    """Write the source manifest to ``manifest_path`` (only when it changed); returns it."""
    manifest_path = Path(manifest_path)
    previous = _read_previous(manifest_path)
    config = json.loads(json.dumps(_config(params, seed)))  # as JSON holds it (tuples become lists)
    try:
        content = _content(params, raw_dir, cache_dir)
    except SourceUnreachable as exc:
        if previous is not None and (previous.get("source"), previous.get("config")) == (params.source, config):
            log.warning("could not check the %s source (%s); keeping the previous source manifest, so the "
                        "pipeline treats the source as unchanged until a check succeeds", params.source, exc)
            return previous
        raise DownloadError(f"could not reach the {params.source} source to check it for changes ({exc}); "
                            f"check the network and download.{params.source} in params.yaml, then rerun.") from None
    text = json.dumps({"source": params.source, "config": config, "content": content}, indent=1, sort_keys=True) + "\n"
    manifest = json.loads(text)
    if previous == manifest and manifest_path.read_text() == text:
        log.info("source unchanged since the last check (%s)", manifest_path)
        return manifest
    log.info("source %s: %s", "changed" if previous else "recorded", _describe_change(previous, manifest))
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(text)
    return manifest


def _read_previous(path: Path) -> dict | None:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return previous if isinstance(previous, dict) else None


def _config(params: DownloadParams, seed: int) -> dict:
    """What params.yaml says the source is (the part a failed remote check cannot change)."""
    if params.source == "synthetic":
        return {**dataclasses.asdict(params.synthetic), "seed": seed}
    if params.source == "local":
        return {"path": params.local.path}
    if params.source == "url":
        return {"url": params.url.url, "md5": params.url.md5}
    return {"dataset": params.kaggle.dataset, "api_url": params.kaggle.api_url}


def _content(params: DownloadParams, raw_dir: str | Path, cache_dir: str | Path) -> dict:
    """What the source holds now, as far as it can be told without downloading it."""
    if params.source == "synthetic":
        return {}
    if params.source == "local":
        path = local_source_path(params.local.path, raw_dir, cache_dir)
        return local_content(path, Path(cache_dir) / HASH_CACHE)
    if params.source == "url":
        return url_content(params.url)
    return kaggle_content(params.kaggle)


def local_content(path: Path, cache_path: Path) -> dict:
    """A folder: ``{"files": {relative name: {"size", "sha256"}}}``; a file: ``{"size", "sha256"}``."""
    if not path.is_dir():
        return hash_files([path], cache_path)[path]
    refuse_outside_links(path)
    files = list(walk_nifti(path))
    hashes = hash_files(files, cache_path)
    return {"files": {f.relative_to(path).as_posix(): hashes[f] for f in files}}


def hash_files(paths: list[Path], cache_path: Path) -> dict[Path, dict]:
    """``{path: {"size", "sha256"}}``, reusing cached hashes of files whose (path, size, mtime, ctime, inode,
    device) is unchanged; the cache is rewritten with exactly these files."""
    cache = _read_previous(cache_path) or {}
    stats = {p: os.stat(p) for p in paths}
    keys = {p: _stat_key(p, st) for p, st in stats.items()}
    known = {p: cache[keys[p]] for p in paths if isinstance(cache.get(keys[p]), str)}
    todo = [p for p in paths if p not in known]
    if todo:
        total = sum(stats[p].st_size for p in todo)
        log.info("hashing %d of %d source file(s) (%.1f MB); the rest are cached", len(todo), len(paths), total / 1e6)
        with progress(total=total, unit="B", unit_scale=True, desc="hash source") as bar:
            for p in todo:
                known[p] = _sha256(p, bar)
    with atomic_path(cache_path) as tmp:
        tmp.write_text(json.dumps({keys[p]: known[p] for p in paths}, indent=0, sort_keys=True))
    return {p: {"size": stats[p].st_size, "sha256": known[p]} for p in paths}


def _stat_key(path: Path, st: os.stat_result) -> str:
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def _sha256(path: Path, bar: Any, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def url_content(src: UrlSource) -> dict:
    """The server's validators for ``src.url`` (the md5 is in the config part of the manifest)."""
    validators = remote_validators(src.url, src.timeout_s)
    if not validators:
        log.warning("%s publishes no ETag, Last-Modified or Content-Length: a new release there cannot be "
                    "detected; change download.url.md5 (or the URL) to fetch it again", src.url)
    return validators


def kaggle_content(src: KaggleSource) -> dict:
    """The dataset's version fields from ``datasets/view``, else the validators of its download URL."""
    auth = kaggle_credentials()
    api = src.api_url.rstrip("/")
    resp = _request("GET", f"{api}/datasets/view/{src.dataset}", src.timeout_s, auth)
    if resp.ok:
        try:
            meta = resp.json()
        except ValueError:
            meta = {}
        version = {name: meta[key] for key, name in KAGGLE_VERSION_FIELDS.items() if isinstance(meta, dict)
                   and meta.get(key) is not None}
        if version:
            return version
    elif resp.status_code in (401, 403):
        raise DownloadError(f"Kaggle refused the credentials for {src.dataset} (HTTP {resp.status_code}); check "
                            f"KAGGLE_USERNAME / KAGGLE_KEY or kaggle.json, and that you accepted the dataset's terms.")
    return remote_validators(f"{api}/datasets/download/{src.dataset}", src.timeout_s, auth)


def remote_validators(url: str, timeout_s: float, auth: tuple[str, str] | None = None) -> dict:
    """ETag, Last-Modified and Content-Length of ``url`` (those present), by HEAD, or by a GET whose body is
    never read where HEAD is not allowed. Raises SourceUnreachable or, for a refusal, DownloadError."""
    resp = _request("HEAD", url, timeout_s, auth)
    if resp.status_code in (403, 405, 501):  # HEAD not allowed (signed URLs are signed for GET)
        resp = _request("GET", url, timeout_s, auth, stream=True)
        resp.close()
    if not resp.ok:
        raise DownloadError(f"checking {url} was refused with HTTP {resp.status_code} {resp.reason}; check the "
                            f"URL and any credentials in params.yaml.")
    return {name: resp.headers[header] for header, name in VALIDATORS.items() if header in resp.headers}


def _request(method: str, url: str, timeout_s: float, auth: tuple[str, str] | None,
             stream: bool = False) -> requests.Response:
    try:
        resp = requests.request(method, url, timeout=timeout_s, auth=auth, allow_redirects=True, stream=stream)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise SourceUnreachable(f"{type(exc).__name__} for {url}") from None
    if resp.status_code >= 500:
        resp.close()
        raise SourceUnreachable(f"HTTP {resp.status_code} from {url}")
    return resp


def _describe_change(previous: dict | None, manifest: dict) -> str:
    """A short summary for the log, e.g. ``3 file(s) added, 1 changed, 0 removed``."""
    old = ((previous or {}).get("content") or {}).get("files")
    new = manifest["content"].get("files")
    if not isinstance(old, dict) or new is None or previous.get("config") != manifest["config"]:
        return json.dumps({"source": manifest["source"], **manifest["config"]}, sort_keys=True)
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    changed = sum(old[k] != new[k] for k in new.keys() & old.keys())
    return f"{added} file(s) added, {changed} changed, {removed} removed"
