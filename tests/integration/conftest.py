"""Fixtures for tests that need real services.

- `postgres` (session): a PostgreSQL cluster of our own on 127.0.0.1 (see pg.py); skipped with
  the reason only when the PostgreSQL binaries are missing.
- `postgres_url`: a fresh empty database in that cluster.
- `journal_url` / `journal`: parametrized over both journal backends (`sqlite`, `postgresql`),
  so the same test runs against each; `journal` is opened (migrated) and closed around the test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import MISSING_REASON, LocalPostgres, find_binaries  # noqa: E402

from cutover.journal import Journal, open_journal  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    if find_binaries() is None:
        pytest.skip(MISSING_REASON)
    cluster = LocalPostgres().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: LocalPostgres) -> str:
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / '.cutover' / 'state.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def journal(journal_url: str) -> Iterator[Journal]:
    j = open_journal(journal_url)
    try:
        yield j
    finally:
        j.close()
