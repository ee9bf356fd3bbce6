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

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from token_ledger import _validation, commands
from token_ledger.account import TokenAccount
from token_ledger.asyncio_storage import AsyncRepository, InlineRepository, ThreadedRepository
from token_ledger.clock import Clock, system_clock
from token_ledger.commands import DEFAULT_RESERVATION_TTL, DEFAULT_RESET_BATCH_SIZE, Command
from token_ledger.errors import InvalidInput
from token_ledger.grants import Reservation
from token_ledger.memory import MemoryRepository
from token_ledger.monitoring import AlertReport, Health
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.reconciliation import Discrepancy
from token_ledger.results import DeductResult, History, TokenStatus
from token_ledger.thresholds import Notification, Threshold, check_thresholds
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from types import TracebackType

    import sqlite_utils

    from token_ledger.postgres_async import AsyncPostgresTarget

__all__ = ["AsyncTokenLedger"]

T = TypeVar("T")
R = TypeVar("R")


class AsyncTokenLedger:
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

    # accounts

    async def open_account(
        self,
        user_id: str,
        monthly_limit: int,
        *,
        reset_anchor: datetime | None = None,
        time_zone: str | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Create the user's account; :class:`AccountExists` if there is one already."""
        return await self._perform(
            commands.open_account(
                self.policy,
                self.now(),
                user_id,
                monthly_limit,
                reset_anchor,
                time_zone,
                rollover_cap,
            )
        )

    async def ensure_account(
        self,
        user_id: str,
        monthly_limit: int,
        *,
        reset_anchor: datetime | None = None,
        time_zone: str | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Return the user's account, creating it with these settings if it is missing."""
        return await self._perform(
            commands.ensure_account(
                self.policy,
                self.now(),
                user_id,
                monthly_limit,
                reset_anchor,
                time_zone,
                rollover_cap,
            )
        )

    async def get_account(self, user_id: str) -> TokenAccount:
        """The account as stored, which may hold a reset that is still pending."""
        return await self._perform(commands.get_account(user_id))

    async def status(self, user_id: str) -> TokenStatus:
        """Usage in the current period; a pending reset is shown but not written."""
        return await self._perform(commands.status(self.policy, self.now(), user_id))

    # writes

    async def deduct(
        self,
        user_id: str,
        amount: int,
        *,
        feature: str | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeductResult:
        """Spend ``amount`` tokens; see :meth:`TokenLedger.deduct`."""
        return await self._perform(
            commands.deduct(
                self.policy,
                self.now(),
                user_id,
                amount,
                feature=feature,
                context=context,
                idempotency_key=idempotency_key,
                thresholds=self.thresholds,
            )
        )

    async def set_limit(
        self,
        user_id: str,
        monthly_limit: int | None = None,
        *,
        overage_limit: int | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Change any of the limits, now; see :meth:`TokenLedger.set_limit`."""
        return await self._perform(
            commands.set_limit(
                self.policy,
                self.now(),
                user_id,
                monthly_limit,
                overage_limit,
                rollover_cap,
                self.thresholds,
            )
        )

    async def set_time_zone(self, user_id: str, time_zone: str | None) -> TokenAccount:
        """Count the account's calendar in ``time_zone``; see :meth:`TokenLedger.set_time_zone`."""
        return await self._perform(
            commands.set_time_zone(self.policy, self.now(), user_id, time_zone)
        )

    async def set_thresholds(
        self, user_id: str, thresholds: Iterable[Threshold] | None
    ) -> TokenAccount:
        """The account's own thresholds (``None``: the defaults); see
        :meth:`TokenLedger.set_thresholds`."""
        return await self._perform(
            commands.set_thresholds(self.policy, self.now(), user_id, thresholds)
        )

    async def grant(
        self,
        user_id: str,
        amount: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Transaction:
        """Add tokens that do not reset monthly; see :meth:`TokenLedger.grant`."""
        return await self._perform(
            commands.grant(
                self.policy,
                self.now(),
                user_id,
                amount,
                expires_at=expires_at,
                reason=reason,
                idempotency_key=idempotency_key,
                priority=priority,
            )
        )

    async def void_grant(
        self,
        grant_id: str,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Take back what is left of a grant, for good; see :meth:`TokenLedger.void_grant`."""
        return await self._perform(
            commands.void_grant(
                self.policy,
                self.now(),
                grant_id,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    async def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        ttl: timedelta = DEFAULT_RESERVATION_TTL,
        feature: str | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` tokens for work whose cost is known only afterwards."""
        return await self._perform(
            commands.reserve(
                self.policy,
                self.now(),
                user_id,
                amount,
                ttl=ttl,
                feature=feature,
                idempotency_key=idempotency_key,
                thresholds=self.thresholds,
            )
        )

    async def commit(self, reservation_id: str, actual_amount: int) -> DeductResult:
        """Spend ``actual_amount`` (at most what was reserved) and release the rest."""
        return await self._perform(
            commands.commit(self.policy, self.now(), reservation_id, actual_amount, self.thresholds)
        )

    async def release(self, reservation_id: str) -> DeductResult:
        """Give a hold back whole, spending nothing."""
        return await self._perform(commands.release(self.policy, self.now(), reservation_id))

    async def refund(
        self,
        transaction_id: int,
        amount: int | None = None,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Reverse all (by default) or part of a deduction; see :meth:`TokenLedger.refund`."""
        return await self._perform(
            commands.refund(
                self.policy,
                self.now(),
                transaction_id,
                amount,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    async def reset_if_needed(self, user_id: str) -> bool:
        """Persist a pending reset; the seed's ``reset_user_tokens_if_needed``."""
        return await self._perform(commands.reset_if_needed(self.policy, self.now(), user_id))

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

    # operations

    async def health(self) -> Health:
        """The guide's health check: every account should be in the current period."""
        return await self._perform(commands.health(self.policy, self.now()))

    async def alerts(
        self,
        *,
        stale_after: timedelta = timedelta(days=1),
        stale_threshold: int = 0,
        failed_window: timedelta = timedelta(hours=1),
        failed_threshold: int = 10,
        usage_ratio: float = 0.9,
        high_usage_threshold: int | None = None,
    ) -> AlertReport:
        """The guide's three monitoring alerts; see :meth:`TokenLedger.alerts`."""
        return await self._perform(
            commands.alerts(
                self.policy,
                self.now(),
                stale_after=stale_after,
                stale_threshold=stale_threshold,
                failed_window=failed_window,
                failed_threshold=failed_threshold,
                usage_ratio=usage_ratio,
                high_usage_threshold=high_usage_threshold,
            )
        )

    async def reconcile(self, user_id: str | None = None) -> list[Discrepancy]:
        """Where stored balances differ from what the entries add up to; [] when none."""
        return await self._perform(commands.reconcile(user_id))

    # reads

    async def history(
        self,
        user_id: str | None = None,
        *,
        operation_type: OperationType | str | None = None,
        feature: str | None = None,
        success: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        reference: str | None = None,
        limit: int = 100,
    ) -> History:
        """Ledger entries, newest first; page with ``before_id=page[-1].id``."""
        return await self._perform(
            commands.history(
                user_id=user_id,
                operation_type=operation_type,
                feature=feature,
                success=success,
                since=since,
                until=until,
                before_id=before_id,
                reference=reference,
                limit=limit,
            )
        )

    # notifications

    async def notifications(self, *, after: int = 0, limit: int = 100) -> list[Notification]:
        """Notifications with an id above ``after``, oldest first; see
        :meth:`TokenLedger.notifications`."""
        return await self._perform(commands.notifications(after, limit))

    async def notification_cursor(self, consumer: str) -> int:
        """The id ``consumer`` last acknowledged (0 at first)."""
        return await self._perform(commands.notification_cursor(consumer))

    async def acknowledge_notifications(self, consumer: str, up_to: int) -> int:
        """Record that ``consumer`` handled every notification up to id ``up_to``; see
        :meth:`TokenLedger.acknowledge_notifications`."""
        return await self._perform(commands.acknowledge_notifications(consumer, up_to))

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
