"""``AsyncTokenLedger``: :class:`~token_ledger.TokenLedger` for asyncio, every call a coroutine.

The same calls with the same arguments, results and errors: each asks
:mod:`token_ledger.commands` for its checked :class:`~token_ledger.commands.Command`, as the
synchronous facade does, and hands the operation to an
:class:`~token_ledger.asyncio_storage.AsyncRepository` to run. Nothing of a rule or a step
is written twice.

Import it from here (``from token_ledger.asyncio_application import AsyncTokenLedger``) or as
``token_ledger.AsyncTokenLedger``; neither imports psycopg until a PostgreSQL ledger is made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from token_ledger import _validation, commands
from token_ledger.asyncio_calls import AsyncLedgerCalls
from token_ledger.asyncio_storage import AsyncRepository, InlineRepository, ThreadedRepository
from token_ledger.clock import Clock, system_clock
from token_ledger.commands import DEFAULT_RESET_BATCH_SIZE, Command
from token_ledger.errors import InvalidInput
from token_ledger.memory import MemoryRepository
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.thresholds import Threshold, check_thresholds

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from types import TracebackType

    import sqlite_utils

    from token_ledger.postgres_async import AsyncPostgresTarget

__all__ = ["AsyncTokenLedger"]

T = TypeVar("T")
R = TypeVar("R")


class AsyncTokenLedger(AsyncLedgerCalls):
    """Monthly token allowances, spent safely, from asyncio.

    Every call of :class:`~token_ledger.TokenLedger` is here as a coroutine with the same
    arguments, results and errors. ``async with`` opens the ledger (migrations, a pool) and
    closes it; without it the first call opens it and :meth:`close` closes it.

    A task cancelled at any await point leaves nothing half-written: its unit of work
    commits or rolls back whole, and its connection goes back to the pool outside any
    transaction. A call that was cancelled may still have been stored (when the cancellation
    came after its COMMIT was sent); a retry with the same ``idempotency_key`` then answers
    it without spending twice.
    """

    def __init__(
        self,
        repository: AsyncRepository,
        *,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
        thresholds: Iterable[Threshold] = (),
    ) -> None:
        self.repository = repository
        self.policy = policy if policy is not None else MonthlyResetPolicy()
        self._clock = clock
        self.thresholds = check_thresholds(thresholds)
        """The notification thresholds of every account that has none of its own."""

    @classmethod
    def memory(
        cls,
        *,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
        thresholds: Iterable[Threshold] = (),
    ) -> AsyncTokenLedger:
        """A ledger held in this process only, run in the event loop (it does no I/O)."""
        return cls(
            InlineRepository(MemoryRepository()), policy=policy, clock=clock, thresholds=thresholds
        )

    @classmethod
    def sqlite(
        cls,
        database: str | Path | sqlite_utils.Database | sqlite3.Connection,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
        thresholds: Iterable[Threshold] = (),
    ) -> AsyncTokenLedger:
        """A ledger in a SQLite file, driven in a worker thread of its own.

        The arguments are :meth:`TokenLedger.sqlite`'s; the file is opened (and migrated) in
        that thread when the ledger opens. Each unit of work is one call into the thread.
        """
        from token_ledger.sqlite import SQLiteRepository

        return cls(
            ThreadedRepository(
                lambda: SQLiteRepository(
                    database, synchronous=synchronous, busy_timeout=busy_timeout
                )
            ),
            policy=policy,
            clock=clock,
            thresholds=thresholds,
        )

    @classmethod
    def postgres(
        cls,
        target: AsyncPostgresTarget,
        *,
        schema: str = "public",
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
        thresholds: Iterable[Threshold] = (),
    ) -> AsyncTokenLedger:
        """A ledger in PostgreSQL through psycopg's asyncio classes.

        ``target`` is a connection URL (a pool is made when the ledger opens and closed with
        it), a ``psycopg_pool.AsyncConnectionPool`` or a ``psycopg.AsyncConnection`` (both
        stay yours to open and close); see
        :class:`~token_ledger.postgres_async.AsyncPostgresRepository`.
        """
        from token_ledger.postgres_async import AsyncPostgresRepository

        return cls(
            AsyncPostgresRepository(target, schema=schema),
            policy=policy,
            clock=clock,
            thresholds=thresholds,
        )

    @classmethod
    def open(
        cls,
        url: str,
        *,
        create: bool = True,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
        thresholds: Iterable[Threshold] = (),
    ) -> AsyncTokenLedger:
        """The ledger a database URL names, read as :meth:`TokenLedger.open` reads it.

        Nothing is connected yet: ``async with`` (or the first call) opens it.
        """
        from token_ledger.database_url import open_ledger

        opened = open_ledger(
            cast(Any, cls), url, create=create, policy=policy, clock=clock, thresholds=thresholds
        )
        return cast(AsyncTokenLedger, opened)

    async def __aenter__(self) -> AsyncTokenLedger:
        await self.repository.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.repository.close()

    def now(self) -> datetime:
        return _validation.instant(self._clock(), "clock()")

    @asynccontextmanager
    async def within(
        self, connection: object, *, schema: str | None = None
    ) -> AsyncIterator[AsyncTokenLedger]:
        """The ledger inside a transaction you own: ``async with ledger.within(conn) as tokens``.

        ``connection`` is a ``psycopg.AsyncConnection`` or a SQLAlchemy ``AsyncSession`` (or
        ``AsyncConnection``) on the ``postgresql+psycopg`` driver, pointing at this ledger's
        database; ``schema`` defaults to this ledger's. ``tokens`` has every call of this
        ledger; each write is a savepoint of your transaction, committed by your ``COMMIT``
        and nothing else, never retried (a :class:`~token_ledger.errors.TransientStorageError`
        is yours to retry, with the whole transaction); reads see the transaction's
        uncommitted writes; after the block, its calls raise ``TransactionRequired``. The
        same shape and rules as :meth:`TokenLedger.within`; see
        :class:`~token_ledger.postgres_async.AsyncPostgresTransaction`.

        The ledger is opened first if it is not open yet (its migrations run on its own
        target, not on your transaction).
        """
        bound_to = getattr(self.repository, "bound_to", None)
        if bound_to is None:
            raise InvalidInput(
                "ledger.within() needs a PostgreSQL ledger (AsyncTokenLedger.postgres)"
            )
        bound: AsyncRepository = await bound_to(connection, schema=schema)
        try:
            yield AsyncTokenLedger(
                bound, policy=self.policy, clock=self._clock, thresholds=self.thresholds
            )
        finally:
            await bound.close()

    async def reset_all_stale(
        self,
        *,
        batch_size: int = DEFAULT_RESET_BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Persist every pending reset, one unit of work per batch; see
        :meth:`TokenLedger.reset_all_stale`."""
        reset = commands.reset_all_stale(self.policy, self.now(), batch_size, progress)
        reset_count = 0
        after: str | None = None
        while True:
            batch, batch_resets = await self._perform(reset.batch(after))
            reset_count += batch_resets
            if reset.progress is not None:
                reset.progress(reset_count)
            if len(batch) < reset.batch_size:
                return reset_count
            after = batch[-1].user_id

    async def _perform(self, command: Command[T, R]) -> R:
        """Run a checked call: a write in a unit of work (again from the start if it lost a
        race, where the repository retries), a read against stored state.

        A command's shortcut (a deduction in one guarded statement) goes first where the
        repository offers it, as in :meth:`TokenLedger._perform`; ``None`` from it means
        the case is not one it covers, and the command's own operation runs."""
        shortcut = getattr(command, "shortcut", None)
        if shortcut is not None:
            found = await self.repository.try_shortcut(shortcut)
            if found is not None:
                return command.answer(found)
        if command.writes:
            result = await self.repository.write(command.operation)
        else:
            result = await self.repository.read(command.operation())
        return command.answer(result)
