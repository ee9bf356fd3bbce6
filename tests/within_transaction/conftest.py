from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from postgres_server import Database
from token_ledger.testing import MovableClock
from within_transaction.engines import Engine, PostgresEngine, SQLiteEngine


@pytest.fixture
def sqlite_engine(tmp_path: Path, clock: MovableClock) -> Iterator[SQLiteEngine]:
    engine = SQLiteEngine(tmp_path / "app.db", clock)
    yield engine
    engine.close()


@pytest.fixture
def postgres_engine(
    request: pytest.FixtureRequest, postgres_database: Database, clock: MovableClock
) -> Iterator[PostgresEngine]:
    engine = PostgresEngine(postgres_database.url, postgres_database.new_schema(request), clock)
    yield engine
    engine.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The application's database on each engine, with the ledger's tables migrated."""
    found: Engine = request.getfixturevalue(f"{request.param}_engine")
    return found
