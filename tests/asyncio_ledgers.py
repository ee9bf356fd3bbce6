"""Helpers for testing ``AsyncTokenLedger``: an event loop in a thread of its own, a blocking
face of an async ledger for synchronous tests, and the async twin of a test repository.

The twin of a repository stores into the very same place (the same in-memory engine, the
same SQLite connection, the same PostgreSQL schema), so a test can write through the async
ledger and look at the result through the synchronous one, or the other way round.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from postgres_server import Database
from token_ledger.asyncio_application import AsyncTokenLedger
from token_ledger.asyncio_storage import AsyncRepository, InlineRepository, ThreadedRepository
from token_ledger.memory import MemoryRepository
from token_ledger.postgres import PostgresRepository
from token_ledger.repository import TokenRepository
from token_ledger.sqlite import SQLiteRepository

T = TypeVar("T")
DEADLINE = 120.0  # seconds for one call: a hung call fails the test instead of the session


class EventLoopThread:
    """An asyncio event loop running in a daemon thread; :meth:`run` awaits a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="async-ledger-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(DEADLINE)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


class BlockingLedger:
    """An :class:`AsyncTokenLedger` whose coroutine calls block until the loop thread answers.

    What the contract suite (written against ``TokenLedger``) calls: every coroutine method
    of the async ledger is awaited on ``loop`` and its result returned, or its exception
    raised, here. ``repository`` is the synchronous repository the async ledger's storage
    shares, which tests reach for as ``ledger.repository``.
    """

    def __init__(
        self, ledger: AsyncTokenLedger, loop: EventLoopThread, repository: TokenRepository
    ) -> None:
        self.async_ledger = ledger
        self.repository = repository
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.async_ledger, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def blocking(*arguments: Any, **options: Any) -> Any:
            return self._loop.run(attribute(*arguments, **options))

        return blocking

    def close(self) -> None:
        self._loop.run(self.async_ledger.close())


def async_twin(repository: TokenRepository, request: pytest.FixtureRequest) -> AsyncRepository:
    """An async repository that stores where ``repository`` stores, as each engine's
    ``AsyncTokenLedger`` constructor would make it."""
    if isinstance(repository, MemoryRepository):
        return InlineRepository(repository)
    if isinstance(repository, SQLiteRepository):
        return ThreadedRepository.of(repository)
    if isinstance(repository, PostgresRepository):
        from token_ledger.postgres_async import AsyncPostgresRepository

        database: Database = request.getfixturevalue("postgres_database")
        return AsyncPostgresRepository(database.url, schema=repository._schema)
    raise TypeError(f"no async twin for {type(repository).__name__}")
