"""The storage engines every contract test runs against.

To add an adapter, add one entry to ``BACKENDS``: a factory that takes the
pytest ``request`` and a fresh temporary directory and returns an empty
repository. The contract suite (:mod:`token_ledger.testing.contract`) is the
definition of an adapter: ``tests/contract/test_engines.py`` runs it with one
subclass per entry (a test there fails until the new entry has its own), and
the tests outside it that take ``repository_factory`` or ``repository`` from
``conftest.py`` run over every entry.

The ``-with-sql`` engines have the optional SQL (:mod:`token_ledger.sql`)
installed, so the whole suite also shows that its triggers leave the
library's writes as they are. The SQL counts months in one time zone, so
these repositories are told the policy a test uses (``adopt_policy``) and
install the SQL for it, or skip where the SQL cannot follow it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from postgres_server import Database
from token_ledger import MonthlyResetPolicy, install_postgres_sql, install_sqlite_sql
from token_ledger.memory import MemoryRepository
from token_ledger.postgres import PostgresRepository
from token_ledger.repository import TokenRepository
from token_ledger.sqlite import SQLiteRepository

RepositoryFactory = Callable[[pytest.FixtureRequest, Path], TokenRepository]


def memory_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    return MemoryRepository()


def sqlite_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    return SQLiteRepository(directory / "ledger.db")


def postgres_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    database: Database = request.getfixturevalue("postgres_database")
    return PostgresRepository(database.url, schema=database.new_schema(request))


class SQLiteWithSQL(SQLiteRepository):
    def adopt_policy(self, policy: MonthlyResetPolicy) -> None:
        if policy != MonthlyResetPolicy():
            pytest.skip("the SQLite SQL counts calendar months in UTC only")


def sqlite_with_sql_repository(request: pytest.FixtureRequest, directory: Path) -> TokenRepository:
    repository = SQLiteWithSQL(directory / "ledger.db")
    install_sqlite_sql(repository.db)
    return repository


class PostgresWithSQL(PostgresRepository):
    def __init__(self, database: Database, schema: str) -> None:
        super().__init__(database.url, schema=schema)
        self.database = database
        self.schema = schema
        self.timezone: str | None = None
        self.adopt_policy(MonthlyResetPolicy())

    def adopt_policy(self, policy: MonthlyResetPolicy) -> None:
        if policy.months != 1:
            pytest.skip("the PostgreSQL SQL counts periods of one month")
        if policy.timezone != self.timezone:
            with self.database.connect() as conn:
                install_postgres_sql(conn, schema=self.schema, timezone=policy.timezone)
            self.timezone = policy.timezone


def postgres_with_sql_repository(
    request: pytest.FixtureRequest, directory: Path
) -> TokenRepository:
    database: Database = request.getfixturevalue("postgres_database")
    return PostgresWithSQL(database, database.new_schema(request))


BACKENDS: list[object] = [
    pytest.param(memory_repository, id="memory"),
    pytest.param(sqlite_repository, id="sqlite"),
    pytest.param(sqlite_with_sql_repository, id="sqlite-with-sql"),
    pytest.param(postgres_repository, marks=pytest.mark.postgres, id="postgres"),
    pytest.param(postgres_with_sql_repository, marks=pytest.mark.postgres, id="postgres-with-sql"),
]
