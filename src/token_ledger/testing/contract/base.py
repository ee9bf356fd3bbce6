"""The hooks an adapter's test class implements, and the fixtures every part of the contract uses.

Every fixture is built on :meth:`ContractBase.create_repository`, so a
subclass that implements it runs the whole contract against its engine,
without any ``conftest.py`` of ours.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import pytest

from token_ledger import MonthlyResetPolicy, TokenLedger
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock

START = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
"""Where the clock of every test starts: the middle of a calendar month."""

RepositoryFactory = Callable[[], TokenRepository]
"""What the ``repository_factory`` fixture is: each call makes one more empty repository."""

LedgerFactory = Callable[..., TokenLedger]
"""What the ``make_ledger`` fixture is: ``make_ledger(policy=None)`` returns a ledger."""


class ContractBase:
    """Hooks and fixtures of the contract; subclass :class:`RepositoryContract`, not this.

    Hooks, to override in the subclass:

    - :meth:`create_repository` (required): a new, empty repository.
    - :meth:`adopt_policy`: prepare a repository for a test's reset policy.
    - :attr:`unsupported`: tests the engine cannot pass, each skipped with its reason.

    Fixtures: ``repository_factory``, ``repository``, ``clock``, ``make_ledger``
    and ``ledger``; a subclass may override any of them like any pytest fixture.
    """

    request: pytest.FixtureRequest
    """The request of the fixture that is creating a repository, set before each call of
    :meth:`create_repository`: ask it for fixtures the engine needs
    (``self.request.getfixturevalue("my_server")``) or add finalizers to it."""

    unsupported: ClassVar[Mapping[str, str]] = {}
    """Tests this engine cannot pass, by method name, each with the reason it cannot.

    Each is skipped with ``"<class> does not support this: <reason>"``, which
    ``pytest -ra`` lists; a name that is not a test of the class fails every test.
    """

    def create_repository(self, directory: Path) -> TokenRepository:
        """A new, empty repository that shares nothing with any other this returns.

        ``directory`` is a fresh temporary directory for the repository's
        files, if it has any. The fixtures close every repository they make.
        Tests may call this several times (``repository_factory``), and the
        class-scoped fixtures call it on an instance of their own, so anything
        this needs should come from :attr:`request`, not from other fixtures
        of the test.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement create_repository(directory) and return"
            " a new, empty TokenRepository"
        )

    def adopt_policy(self, repository: TokenRepository, policy: MonthlyResetPolicy) -> None:
        """Called before a ledger with ``policy`` uses ``repository``; by default nothing.

        For engines that keep reset rules of their own (token-ledger's
        optional SQL counts months in the database): make them follow
        ``policy``, or call ``pytest.skip(reason)`` when they cannot. A repository
        is used directly through the port only as the default
        ``MonthlyResetPolicy()`` would, without a call of this hook.
        """

    @pytest.fixture(autouse=True)
    def _skip_unsupported(self, request: pytest.FixtureRequest) -> None:
        """Skips, with the subclass's reason, each test it names in :attr:`unsupported`."""
        tests = {name for name in dir(type(self)) if name.startswith("test")}
        unknown = sorted(set(self.unsupported) - tests)
        if unknown:
            pytest.fail(f"{type(self).__name__}.unsupported names no test of the class: {unknown}")
        reason = self.unsupported.get(request.function.__name__)
        if reason is not None:
            pytest.skip(f"{type(self).__name__} does not support this: {reason}")

    @pytest.fixture
    def repository_factory(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> Iterator[RepositoryFactory]:
        """Makes empty repositories of the engine under test; closes them afterwards."""
        made: list[TokenRepository] = []
        counter = itertools.count()

        def make() -> TokenRepository:
            directory = tmp_path / f"repository-{next(counter)}"
            directory.mkdir()
            self.request = request
            repository = self.create_repository(directory)
            made.append(repository)
            return repository

        yield make
        for repository in made:
            repository.close()

    @pytest.fixture
    def repository(self, repository_factory: RepositoryFactory) -> TokenRepository:
        return repository_factory()

    @pytest.fixture
    def clock(self) -> MovableClock:
        return MovableClock(START)

    @pytest.fixture
    def make_ledger(self, repository: TokenRepository, clock: MovableClock) -> LedgerFactory:
        def make(policy: MonthlyResetPolicy | None = None) -> TokenLedger:
            policy = policy if policy is not None else MonthlyResetPolicy()
            self.adopt_policy(repository, policy)
            return TokenLedger(repository, policy=policy, clock=clock)

        return make

    @pytest.fixture
    def ledger(self, make_ledger: LedgerFactory) -> TokenLedger:
        return make_ledger()
