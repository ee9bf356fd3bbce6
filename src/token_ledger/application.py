"""``TokenLedger``: the domain, a repository and a clock, wired into one object.

Each public call asks :mod:`token_ledger.commands` to check its arguments and
make its operation, then runs it (:meth:`TokenLedger._perform`): the rules
live in the domain, the steps in :mod:`token_ledger.operations` and
:mod:`token_ledger.reads`, and this class only chooses how to run them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from token_ledger import _validation, commands, operations
from token_ledger.calls import LedgerCalls
from token_ledger.clock import Clock, system_clock
from token_ledger.commands import DEFAULT_RESERVATION_TTL, DEFAULT_RESET_BATCH_SIZE, Command
from token_ledger.memory import MemoryRepository
from token_ledger.operations import ResetStep
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.repository import TokenRepository
from token_ledger.storage import write_with_retries
from token_ledger.thresholds import Threshold, check_thresholds

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from types import TracebackType

    import sqlite_utils

    from token_ledger.postgres import PostgresTarget
    from token_ledger.within import LedgerInTransaction

__all__ = ["DEFAULT_RESERVATION_TTL", "DEFAULT_RESET_BATCH_SIZE", "TokenLedger"]

T = TypeVar("T")
R = TypeVar("R")


class TokenLedger(LedgerCalls):
    """Monthly token allowances, spent safely.

    Every write is one unit of work of the repository: a pending reset and the
    operation that revealed it are stored together or not at all. Reads such
    as :meth:`status` never write; they show the reset the next write will make.
    """

    def __init__(
        self,
        repository: TokenRepository,
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
    ) -> TokenLedger:
        """A ledger held in this process only; nothing survives it."""
        return cls(MemoryRepository(), policy=policy, clock=clock, thresholds=thresholds)

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
    ) -> TokenLedger:
        """A ledger in a SQLite file (created if missing), ``":memory:"``, or your connection.

        Every process that opens the same file shares the same ledger safely;
        see :class:`~token_ledger.sqlite.SQLiteRepository` for durability.
        """
        from token_ledger.sqlite import SQLiteRepository

        repository = SQLiteRepository(database, synchronous=synchronous, busy_timeout=busy_timeout)
        return cls(repository, policy=policy, clock=clock, thresholds=thresholds)

    @classmethod
    def postgres(
        cls,
        target: PostgresTarget,
        *,
        schema: str = "public",
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
        thresholds: Iterable[Threshold] = (),
    ) -> TokenLedger:
        """A ledger in PostgreSQL, shared by every process that points at the same schema.

        ``target`` is a connection URL (a small pool is made and closed with the
        ledger), a ``psycopg.Connection`` or a ``psycopg_pool.ConnectionPool``
        (both stay yours to close); see :class:`~token_ledger.postgres.PostgresRepository`.
        """
        from token_ledger.postgres import PostgresRepository

        return cls(
            PostgresRepository(target, schema=schema),
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
    ) -> TokenLedger:
        """The ledger a database URL names: ``postgresql://...``, ``sqlite:///path``, a SQLite
        file path, or ``memory://``; see :func:`token_ledger.database_url.parse_database_url`.

        ``create=False`` refuses a SQLite file that does not exist yet, where a mistyped
        path would otherwise open a new, empty ledger.
        """
        from token_ledger.database_url import open_ledger

        return open_ledger(
            cls, url, create=create, policy=policy, clock=clock, thresholds=thresholds
        )

    def __enter__(self) -> TokenLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.repository.close()

    def now(self) -> datetime:
        return _validation.instant(self._clock(), "clock()")

    def reset_all_stale(
        self,
        *,
        batch_size: int = DEFAULT_RESET_BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Persist every pending reset; the seed's ``auto_reset_monthly_tokens``.

        Works in batches of ``batch_size`` accounts, one unit of work each, so a
        large ledger is never locked whole. Returns the number of accounts reset.
        ``progress`` is called with the running count after each batch commits,
        for a progress bar on a large ledger.
        """
        reset = commands.reset_all_stale(self.policy, self.now(), batch_size, progress)
        reset_count = 0
        step = ResetStep(None, 0, last=False)
        while True:
            step = self._perform(
                reset.step(step.after_user_id, step.for_the_domain, step.final_batch)
            )
            reset_count += step.resets
            if reset.progress is not None:
                reset.progress(reset_count)
            if step.last:
                return reset_count

    def within(
        self, connection: object, *, schema: str | None = None
    ) -> AbstractContextManager[LedgerInTransaction]:
        """The ledger's calls inside a transaction you own on ``connection``.

        ``with ledger.within(conn) as tokens: tokens.deduct(...)``: each call is a savepoint
        of your transaction, so your COMMIT stores it with your own writes and your ROLLBACK
        undoes it; nothing here commits or retries. ``connection`` is a psycopg 3
        ``Connection``, a ``sqlite3.Connection`` or ``sqlite_utils.Database``, a SQLAlchemy 2
        ``Connection`` or ``Session``, or Django's connection inside ``transaction.atomic()``;
        ``schema`` (PostgreSQL) defaults to this ledger's. See :mod:`token_ledger.within`.
        """
        from token_ledger.within import within

        return within(self, connection, schema=schema)

    def _perform(self, command: Command[T, R]) -> R:
        """Run a checked call: a write in a unit of work, again from the start if it lost a
        race (with the same instant and idempotency key), a read against the repository.

        A command's shortcut goes first when the repository offers what it needs
        (a deduction in one guarded statement, counts made by the database); when
        it answers ``None``, the command's own operation runs as usual."""
        shortcut = command.shortcut
        if shortcut is not None and shortcut.available(self.repository):
            call = shortcut.call
            if call is not None:  # the deduction's: one call, made without a generator
                found = getattr(self.repository, call.method)(*call.arguments)
            else:
                found = operations.run(shortcut.operation(), self.repository)
            if found is not None:
                return command.answer(found)
        if command.writes:
            result = write_with_retries(
                self.repository, lambda work: operations.run(command.operation(), work)
            )
        else:
            result = operations.run(command.operation(), self.repository)
        return command.answer(result)
