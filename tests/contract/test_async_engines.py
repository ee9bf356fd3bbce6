"""The contract suite on ``AsyncTokenLedger``, over every engine of ``test_engines.py``.

Each class here is the engine's class of ``test_engines.py`` with one change: the ledger
the contract's tests call is an :class:`~token_ledger.asyncio_application.AsyncTokenLedger`
over that engine's async repository (run on an event loop in a thread of its own, behind
a blocking face: ``asyncio_ledgers.BlockingLedger``). The repository the port tests use, and
the one the async ledger stores into, are the same: a test that writes through one and reads
through the other checks that the two facades agree.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

import contract.test_engines as engines
from asyncio_ledgers import BlockingLedger, EventLoopThread, async_twin
from token_ledger import MonthlyResetPolicy, TokenLedger
from token_ledger.asyncio_application import AsyncTokenLedger
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock
from token_ledger.testing.contract import START, LedgerFactory
from token_ledger.testing.contract.hostile_input import Prepared


@pytest.fixture(scope="session")
def event_loop_thread() -> Iterator[EventLoopThread]:
    loop = EventLoopThread()
    yield loop
    loop.close()


class AsyncLedgerContract:
    """Mixed in before an engine's contract class: its ledgers are async ones."""

    @pytest.fixture
    def make_ledger(
        self,
        request: pytest.FixtureRequest,
        repository: TokenRepository,
        clock: MovableClock,
        event_loop_thread: EventLoopThread,
    ) -> Iterator[LedgerFactory]:
        made: list[BlockingLedger] = []

        def make(policy: MonthlyResetPolicy | None = None) -> TokenLedger:
            policy = policy if policy is not None else MonthlyResetPolicy()
            self.adopt_policy(repository, policy)  # type: ignore[attr-defined]
            ledger = AsyncTokenLedger(async_twin(repository, request), policy=policy, clock=clock)
            blocking = BlockingLedger(ledger, event_loop_thread, repository)
            made.append(blocking)
            return blocking  # type: ignore[return-value]  # TokenLedger's calls, blocking

        yield make
        for blocking in made:
            blocking.close()

    @pytest.fixture(scope="class")
    @classmethod
    def prepared(
        cls, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Prepared]:
        """The hostile-input contract's prepared ledger, an async one."""
        loop: EventLoopThread = request.getfixturevalue("event_loop_thread")
        contract: Any = cls()
        contract.request = request
        repository = contract.create_repository(tmp_path_factory.mktemp("hostile"))
        contract.adopt_policy(repository, MonthlyResetPolicy())
        ledger: Any = BlockingLedger(
            AsyncTokenLedger(async_twin(repository, request), clock=MovableClock(START)),
            loop,
            repository,
        )
        ledger.open_account("u1", monthly_limit=50)
        spent = ledger.deduct("u1", 5, feature="chat", context={"a": 1}).transaction.id
        ledger.grant("u1", 10, reason="promo")
        hold = ledger.reserve("u1", 3).id
        yield Prepared(ledger, spent, hold)
        ledger.close()
        repository.close()


class TestAsyncMemory(AsyncLedgerContract, engines.TestMemory):
    pass


class TestAsyncSQLite(AsyncLedgerContract, engines.TestSQLite):
    pass


class TestAsyncSQLiteWithSQL(AsyncLedgerContract, engines.TestSQLiteWithSQL):
    pass


class TestAsyncPostgres(AsyncLedgerContract, engines.TestPostgres):
    pass


class TestAsyncPostgresWithSQL(AsyncLedgerContract, engines.TestPostgresWithSQL):
    pass


ASYNC_CLASSES = [
    TestAsyncMemory,
    TestAsyncSQLite,
    TestAsyncSQLiteWithSQL,
    TestAsyncPostgres,
    TestAsyncPostgresWithSQL,
]


def test_every_engine_of_the_contract_runs_it_on_the_async_ledger_too() -> None:
    """A new engine class in ``test_engines.py`` needs its async twin here."""
    assert [cls.__mro__[2] for cls in ASYNC_CLASSES] == engines.ENGINE_CLASSES


def test_the_async_ledger_has_every_public_call_of_the_sync_one_with_its_parameters() -> None:
    """Same names, same parameters (kinds, defaults, annotations); each call a coroutine."""

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(getattr(cls, name))
            for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))
        }

    sync, asynchronous = public(TokenLedger), public(AsyncTokenLedger)
    not_coroutines = {"memory", "sqlite", "postgres", "open", "now", "within"}
    assert set(sync) - {"within"} == set(asynchronous) - {"within"}
    for name, signature in sync.items():
        if name == "within":
            continue
        expected = signature.replace(return_annotation=inspect.Signature.empty)
        actual = asynchronous[name].replace(return_annotation=inspect.Signature.empty)
        # postgres() takes psycopg's async connections and pools rather than its sync ones
        spelled = str(expected).replace("'PostgresTarget'", "'AsyncPostgresTarget'")
        assert (name, spelled) == (name, str(actual))
        assert inspect.iscoroutinefunction(getattr(AsyncTokenLedger, name)) == (
            name not in not_coroutines
        ), name


def test_the_contract_classes_keep_their_engines_marks() -> None:
    marks = {
        cls.__name__: sorted(m.name for m in getattr(cls, "pytestmark", []))
        for cls in ASYNC_CLASSES
    }
    assert marks == {
        "TestAsyncMemory": [],
        "TestAsyncSQLite": [],
        "TestAsyncSQLiteWithSQL": [],
        "TestAsyncPostgres": ["postgres"],
        "TestAsyncPostgresWithSQL": ["postgres"],
    }
