"""The storage engines every contract test runs against.

To add an adapter, add one entry to ``BACKENDS``: a factory that takes the
pytest ``request`` and a fresh temporary directory and returns an empty
repository. The contract suite is the definition of an adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from postgres_server import Database
from token_ledger import MemoryRepository, TokenRepository
from token_ledger.postgres import PostgresRepository
from token_ledger.sqlite import SQLiteRepository

RepositoryFactory = Callable[[pytest.FixtureRequest, Path], TokenRepository]


def memory_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    return MemoryRepository()


def sqlite_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    return SQLiteRepository(directory / "ledger.db")


def postgres_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    database: Database = request.getfixturevalue("postgres_database")
    return PostgresRepository(database.url, schema=database.new_schema(request))


BACKENDS: list[object] = [
    pytest.param(memory_repository, id="memory"),
    pytest.param(sqlite_repository, id="sqlite"),
    pytest.param(postgres_repository, marks=pytest.mark.postgres, id="postgres"),
]
