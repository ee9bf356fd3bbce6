from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from backends import BACKENDS, RepositoryFactory
from postgres_server import Database, running_database
from token_ledger import MonthlyResetPolicy, TokenLedger
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock

# Shared two-core machines: wall-clock deadlines would only measure the neighbours.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

START = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(START)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Database]:
    """One PostgreSQL server for the whole session, started on first use."""
    with running_database() as database:
        yield database


@pytest.fixture(params=BACKENDS)
def repository_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], TokenRepository]]:
    """Makes empty repositories of the engine under test; closes them afterwards."""
    factory: RepositoryFactory = request.param
    made: list[TokenRepository] = []
    counter = itertools.count()

    def make() -> TokenRepository:
        directory = tmp_path / f"repository-{next(counter)}"
        directory.mkdir()
        repository = factory(request, directory)
        made.append(repository)
        return repository

    yield make
    for repository in made:
        repository.close()


@pytest.fixture
def repository(repository_factory: Callable[[], TokenRepository]) -> TokenRepository:
    return repository_factory()


@pytest.fixture
def make_ledger(repository: TokenRepository, clock: MovableClock) -> Callable[..., TokenLedger]:
    def make(policy: MonthlyResetPolicy | None = None) -> TokenLedger:
        policy = policy if policy is not None else MonthlyResetPolicy()
        adopt_policy = getattr(repository, "adopt_policy", None)  # see backends.py
        if adopt_policy is not None:
            adopt_policy(policy)
        return TokenLedger(repository, policy=policy, clock=clock)

    return make


@pytest.fixture
def ledger(make_ledger: Callable[..., TokenLedger]) -> TokenLedger:
    return make_ledger()
