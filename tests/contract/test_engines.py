"""The contract suite over every engine of ``tests/backends.py``, one subclass each.

The suite itself is shipped as :mod:`token_ledger.testing.contract`; these
classes are what a third-party adapter writes for its own engine. Each takes
its repositories from the factory of ``BACKENDS`` with its id, so the class
name in a test id says which engine failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from backends import BACKENDS, PostgresWithSQL, RepositoryFactory, SQLiteWithSQL
from token_ledger import MonthlyResetPolicy
from token_ledger.repository import TokenRepository
from token_ledger.testing.contract import RepositoryContract

FACTORIES: dict[str, RepositoryFactory] = {
    param.id: param.values[0]  # type: ignore[attr-defined]
    for param in BACKENDS
}


class EngineContract(RepositoryContract):
    """The contract over the ``BACKENDS`` factory named ``engine``."""

    engine: ClassVar[str]

    def create_repository(self, directory: Path) -> TokenRepository:
        return FACTORIES[self.engine](self.request, directory)


class TestMemory(EngineContract):
    engine = "memory"


class TestSQLite(EngineContract):
    engine = "sqlite"


class TestSQLiteWithSQL(EngineContract):
    engine = "sqlite-with-sql"

    def adopt_policy(self, repository: TokenRepository, policy: MonthlyResetPolicy) -> None:
        assert isinstance(repository, SQLiteWithSQL)
        repository.adopt_policy(policy)  # skips where the SQL cannot follow the policy


@pytest.mark.postgres
class TestPostgres(EngineContract):
    engine = "postgres"


@pytest.mark.postgres
class TestPostgresWithSQL(EngineContract):
    engine = "postgres-with-sql"

    def adopt_policy(self, repository: TokenRepository, policy: MonthlyResetPolicy) -> None:
        assert isinstance(repository, PostgresWithSQL)
        repository.adopt_policy(policy)  # installs the SQL for the policy's time zone


ENGINE_CLASSES = [TestMemory, TestSQLite, TestSQLiteWithSQL, TestPostgres, TestPostgresWithSQL]


def test_every_backend_runs_the_contract_with_its_marks() -> None:
    """A new entry of ``BACKENDS`` needs its subclass here, marked as the entry is."""
    expected = {
        param.id: sorted(mark.name for mark in param.marks)  # type: ignore[attr-defined]
        for param in BACKENDS
    }
    actual = {
        cls.engine: sorted(mark.name for mark in getattr(cls, "pytestmark", []))
        for cls in ENGINE_CLASSES
    }
    assert expected == actual
