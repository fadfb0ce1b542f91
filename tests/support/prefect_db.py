"""One migrated Prefect database per test run, copied into each Prefect home a test makes.

A Prefect server on an empty database (a flow's temporary server, `prefect server start`) first runs every one
of Prefect's migrations: about 10 s of CPU, longer than the flow it serves on the tiny cohort. The run's first test
that needs a database migrates one (Prefect's own code, as its server does at start-up, block types included); the
others, on any worker, copy it. Only the database is copied: each home keeps its own settings and memo files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.once import built_once

DATABASE = "prefect.db"  # the name Prefect gives it in PREFECT_HOME

# What a Prefect server does to an empty database at start-up (prefect.server.api.server's lifespan): the
# migrations, then the block types.
_MIGRATE = """
import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def main():
    db = provide_database_interface()
    await db.create_db()
    async with await db.session() as session:
        await run_block_auto_registration(session=session)

asyncio.run(main())
"""


def migrated_database() -> Path:
    """The run's migrated Prefect database, made by the first caller (the others, on any worker, wait for it)."""
    return built_once("prefect-home", _migrate) / DATABASE


def _migrate(home: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _MIGRATE], env={**os.environ, "PREFECT_HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"migrating a Prefect database failed:\n{proc.stdout}{proc.stderr[-4000:]}"


def seeded_home(home: Path) -> Path:
    """``home`` (made if missing) holding a migrated Prefect database, unless it already holds one."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / DATABASE).exists():
        partial = home / f".{DATABASE}.part"
        shutil.copyfile(migrated_database(), partial)
        with contextlib.suppress(FileExistsError):
            os.link(partial, home / DATABASE)  # a server that made one meanwhile keeps its own
        partial.unlink()
    return home
