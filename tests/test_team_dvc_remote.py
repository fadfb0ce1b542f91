"""A team's DVC remote, for real: `dvc push` from one clone, `dvc pull` in a fresh `git clone`, byte for byte.

Two layouts, as the README's team section documents them: a folder every machine reaches (a network share; conftest's
`team_project` pushed there after its tiny `dvc repro`), and an S3-compatible bucket (moto's S3 server on 127.0.0.1,
through dvc-s3, credentials from the environment only). After a pull, `dvc repro` runs nothing but the always-run
`source` check, which leaves its manifest as it was, so nothing downstream reruns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.support.projects import require, run_cmd
from tests.support.services import Service, free_port

pytestmark = pytest.mark.slow

# What DVC restores: the cached outputs of download, validate, slice and train (dvc.yaml).
RESTORED = ("data/raw", "data/validated/manifest.parquet", "data/slices", "models/unet.pt")
BUCKET = "brats-seg-dvc"
# dummy credentials, never valid anywhere; no instance metadata is asked for (and `s3_env` hides any AWS config)
S3_ENV = {"AWS_ACCESS_KEY_ID": "brats-seg-test", "AWS_SECRET_ACCESS_KEY": "brats-seg-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def digests(repo: Path) -> dict[str, str]:
    """sha256 of every file under the restored outputs, by path relative to ``repo``."""
    out = {}
    for name in RESTORED:
        root = repo / name
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def remote_objects(remote: Path) -> set[str]:
    """The objects (``xx/yyyy...`` under files/md5) of a DVC cache or folder remote."""
    root = remote / "files" / "md5"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def cache_objects(repo: Path) -> set[str]:
    return remote_objects(repo / ".dvc" / "cache")


def assert_repro_checks_the_source_only(repo: Path, env: dict[str, str] | None = None) -> None:
    """`dvc repro` runs the `source` check and nothing else, and changes no tracked file (source.json, dvc.lock)."""
    out = run_cmd(["dvc", "repro"], repo, env=env, timeout=600).stdout
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == ["Running stage 'source':"], out
    assert run_cmd(["git", "status", "--porcelain"], repo).stdout == "", out


def pull_into_fresh_clone(origin: Path, clone: Path, env: dict[str, str] | None = None) -> None:
    run_cmd(["git", "clone", "-q", str(origin), str(clone)], clone.parent)
    assert not any((clone / name).exists() for name in RESTORED)  # git holds none of it
    run_cmd(["dvc", "pull"], clone, env=env, timeout=300)


class S3:
    """moto's S3 API server on 127.0.0.1 with an empty bucket: its endpoint, and the environment a DVC client needs
    (dummy keys; empty AWS config files, so that nobody's real profile is read)."""

    def __init__(self, endpoint: str, folder: Path) -> None:
        self.endpoint = endpoint
        for name in ("config", "credentials"):
            (folder / name).write_text("")
        self.env = {**S3_ENV, "AWS_CONFIG_FILE": str(folder / "config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials")}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_ENV["AWS_DEFAULT_REGION"])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    require(importlib.util.find_spec("moto") is not None and shutil.which("moto_server") is not None,
            "moto's S3 server (moto[server], a dev extra) is not installed: make setup installs it")
    folder, port = tmp_path_factory.mktemp("s3"), free_port()
    service = Service("moto_server", ["moto_server", "-H", "127.0.0.1", "-p", str(port)], folder / "moto.log")
    try:
        server = S3(f"http://127.0.0.1:{port}", folder)
        service.wait_for_http(f"{server.endpoint}/moto-api/", timeout=60)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        service.stop()


def test_a_folder_remote_restores_everything_in_a_fresh_clone(team_project, tmp_path):
    origin = team_project.path
    assert run_cmd(["dvc", "remote", "default"], origin).stdout.strip() == "team"
    pushed = remote_objects(team_project.remote)
    assert pushed and pushed <= cache_objects(origin)  # the layout: the cache's files/md5/xx/yyyy, in a folder
    clone = tmp_path / "clone"
    pull_into_fresh_clone(origin, clone)
    expected = digests(origin)
    assert len([p for p in expected if p.startswith("data/raw/")]) >= 25 and "models/unet.pt" in expected
    assert digests(clone) == expected
    assert_repro_checks_the_source_only(clone)


def test_an_s3_remote_round_trips_through_the_s3_api(team_project, s3, tmp_path):
    # one clone, restored from the team folder, adds the bucket as its default remote and pushes there
    first = tmp_path / "first"
    pull_into_fresh_clone(team_project.path, first)
    run_cmd(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/cache"], first)
    run_cmd(["dvc", "remote", "modify", "s3", "endpointurl", s3.endpoint], first)
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in (first / ".dvc" / "config").read_text()  # keys stay out of git
    run_cmd(["git", "commit", "-qam", "DVC remote: the team bucket"], first)
    run_cmd(["dvc", "push"], first, env=s3.env, timeout=300)
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="cache/")
    keys = {obj["Key"] for page in pages for obj in page.get("Contents", [])}
    assert {key.removeprefix("cache/files/md5/") for key in keys} == remote_objects(team_project.remote)

    # a fresh clone of that one pulls from the bucket: the same bytes, and nothing to rerun
    second = tmp_path / "second"
    pull_into_fresh_clone(first, second, env=s3.env)
    assert run_cmd(["dvc", "remote", "default"], second).stdout.strip() == "s3"
    assert digests(second) == digests(team_project.path)
    assert_repro_checks_the_source_only(second, env=s3.env)
