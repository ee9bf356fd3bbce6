"""Spend inside the application's own transaction: ``ledger.within(connection)``.

::

    with conn.transaction():  # your transaction (psycopg 3 here)
        conn.execute("INSERT INTO orders (id, user_id) VALUES (%s, %s)", (order_id, "u1"))
        with ledger.within(conn) as tokens:
            tokens.deduct("u1", 5, feature="order", idempotency_key=f"order-{order_id}")
    # the order and its deduction are committed together, or neither is

The object ``within`` yields (:class:`LedgerInTransaction`) has the ledger's
calls. Each runs the same checked command (:mod:`token_ledger.commands`) and
the same operation (:mod:`token_ledger.operations`, :mod:`token_ledger.reads`)
as :class:`~token_ledger.TokenLedger`, with the ledger's policy and clock, but
in a SAVEPOINT of the caller's transaction: released when the call succeeds,
rolled back to when it fails, so a refused or failed call leaves the caller's
transaction as it was and usable. The library commits nothing and rolls
nothing back here: the caller's COMMIT keeps every call, its ROLLBACK undoes
them all (statuses, history, ``reconcile()`` and idempotency keys are then as
they were before).

Accepted connections, each resolved to its driver's connection (:func:`within`
lists them; anything else raises :class:`UnsupportedConnection`):

- ``psycopg.Connection`` (psycopg 3) and ``sqlite3.Connection`` /
  ``sqlite_utils.Database`` directly;
- a SQLAlchemy 2 ``Connection`` or ORM ``Session`` on ``postgresql+psycopg``
  or ``sqlite``;
- Django's connection (``django.db.connection`` or ``connections[alias]``)
  inside ``transaction.atomic()``, on PostgreSQL with psycopg 3 or on SQLite.

Design for the asyncio twin: a connection is resolved once, to an engine's
:class:`CallerTransaction`, which offers ``savepoint()`` and the repository's
reads; the facade only builds commands and runs their operations against it.
:class:`~token_ledger.AsyncTokenLedger` builds the same commands and drives the
same operations with :func:`token_ledger.operations.run_async` against awaiting
twins of these objects (``AsyncTokenLedger.within``, psycopg ``AsyncConnection``
and SQLAlchemy ``AsyncSession``); handed to this synchronous ``within``, an
asyncio connection is refused with a message saying so.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from token_ledger import _validation, commands, operations
from token_ledger._within_drivers import join
from token_ledger._within_errors import (
    SchemaNotMigrated,
    TransactionRequired,
    UnsupportedConnection,
    WriteLockUnavailable,
    sqlite_busy,
)
from token_ledger.account import TokenAccount
from token_ledger.commands import DEFAULT_RESERVATION_TTL, Command
from token_ledger.errors import TransientStorageError
from token_ledger.grants import Reservation
from token_ledger.monitoring import AlertReport, Health
from token_ledger.reconciliation import Discrepancy
from token_ledger.repository import TokenRepository, UnitOfWork
from token_ledger.results import DeductResult, History, TokenStatus
from token_ledger.storage import RETRY_BASE_DELAY, RETRY_MAX_DELAY, WRITE_ATTEMPTS
from token_ledger.thresholds import Notification, Threshold
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    from token_ledger.application import TokenLedger

__all__ = [
    "LedgerInTransaction",
    "SchemaNotMigrated",
    "TransactionRequired",
    "UnsupportedConnection",
    "WriteLockUnavailable",
    "is_transient",
    "retrying",
    "within",
]

T = TypeVar("T")
R = TypeVar("R")


class CallerTransaction(TokenRepository, Protocol):
    """A transaction the caller owns, as the calls of one ``within`` block use it.

    Its reads (``get_account``, ``history``, ...) run on the caller's connection and
    see the caller's uncommitted writes; :meth:`savepoint` is what ``unit_of_work``
    is for the ledger's own repositories, a savepoint of that transaction instead
    of a transaction of its own. One per engine (``token_ledger._within_sqlite``,
    ``token_ledger._within_postgres``); an asyncio twin would offer the same with
    coroutines.
    """

    def savepoint(self) -> AbstractContextManager[UnitOfWork]:
        """Released when the block succeeds, rolled back to when it raises."""
        ...


# The facade


class LedgerInTransaction:
    """The ledger's calls, run in savepoints of a transaction the caller owns.

    Made by :func:`within` (``ledger.within(connection)``) and usable only
    inside its ``with`` block. Every call takes the ledger's clock at the
    moment it is made and applies its policy; a write's locks (the account's
    row on PostgreSQL, the database's write lock on SQLite) are held until
    the caller's transaction ends. Nothing here retries: a
    :class:`~token_ledger.TransientStorageError` means "run the whole
    transaction again" (:func:`retrying`).
    """

    def __init__(
        self,
        ledger: TokenLedger,
        transaction: CallerTransaction,
        before_call: Callable[[], object] | None = None,
    ) -> None:
        self._ledger = ledger
        self._transaction: CallerTransaction | None = transaction
        self._before_call = before_call

    def _end(self) -> None:
        self._transaction = None

    def _perform(self, command: Command[T, R]) -> R:
        transaction = self._transaction
        if transaction is None:
            raise TransactionRequired(
                "this ledger.within(...) block has ended: its calls ran in your transaction,"
                " so open a new block for the next ones"
            )
        if self._before_call is not None:
            self._before_call()
        with transaction.savepoint() as work:
            target = work if command.writes else transaction
            result = operations.run(command.operation(), target)
        return command.answer(result)

    # accounts

    def open_account(
        self,
        user_id: str,
        monthly_limit: int,
        *,
        reset_anchor: datetime | None = None,
        time_zone: str | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Create the user's account; :class:`~token_ledger.AccountExists` if there is one."""
        ledger = self._ledger
        return self._perform(
            commands.open_account(
                ledger.policy,
                ledger.now(),
                user_id,
                monthly_limit,
                reset_anchor,
                time_zone,
                rollover_cap,
            )
        )

    def ensure_account(
        self,
        user_id: str,
        monthly_limit: int,
        *,
        reset_anchor: datetime | None = None,
        time_zone: str | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """The user's account, created with these settings if it is missing."""
        ledger = self._ledger
        return self._perform(
            commands.ensure_account(
                ledger.policy,
                ledger.now(),
                user_id,
                monthly_limit,
                reset_anchor,
                time_zone,
                rollover_cap,
            )
        )

    def get_account(self, user_id: str) -> TokenAccount:
        """The account as stored in this transaction (a reset may be pending)."""
        return self._perform(commands.get_account(user_id))

    def status(self, user_id: str) -> TokenStatus:
        """Usage in the current period as this transaction sees it, uncommitted writes included."""
        ledger = self._ledger
        return self._perform(commands.status(ledger.policy, ledger.now(), user_id))

    # writes

    def deduct(
        self,
        user_id: str,
        amount: int,
        *,
        feature: str | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeductResult:
        """Spend ``amount`` tokens, as :meth:`TokenLedger.deduct <token_ledger.TokenLedger.deduct>`.

        A refusal writes its failed entry in your transaction (kept if you
        commit) and raises :class:`~token_ledger.InsufficientTokens`; your
        transaction stays usable.
        """
        ledger = self._ledger
        return self._perform(
            commands.deduct(
                ledger.policy,
                ledger.now(),
                user_id,
                amount,
                feature=feature,
                context=context,
                idempotency_key=idempotency_key,
                thresholds=ledger.thresholds,
            )
        )

    def set_limit(
        self,
        user_id: str,
        monthly_limit: int | None = None,
        *,
        overage_limit: int | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Change the monthly limit, the overage limit and/or the rollover cap; usage is kept."""
        ledger = self._ledger
        return self._perform(
            commands.set_limit(
                ledger.policy,
                ledger.now(),
                user_id,
                monthly_limit,
                overage_limit,
                rollover_cap,
                ledger.thresholds,
            )
        )

    def set_time_zone(self, user_id: str, time_zone: str | None) -> TokenAccount:
        """Count the account's calendar in ``time_zone`` (``None``: the policy's)."""
        ledger = self._ledger
        return self._perform(
            commands.set_time_zone(ledger.policy, ledger.now(), user_id, time_zone)
        )

    def set_thresholds(self, user_id: str, thresholds: Iterable[Threshold] | None) -> TokenAccount:
        """The account's own notification thresholds; ``None`` for the ledger's defaults."""
        ledger = self._ledger
        return self._perform(
            commands.set_thresholds(ledger.policy, ledger.now(), user_id, thresholds)
        )

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Transaction:
        """Add tokens that do not reset monthly; returns the ``grant`` entry."""
        ledger = self._ledger
        return self._perform(
            commands.grant(
                ledger.policy,
                ledger.now(),
                user_id,
                amount,
                expires_at=expires_at,
                reason=reason,
                idempotency_key=idempotency_key,
                priority=priority,
            )
        )

    def void_grant(
        self,
        grant_id: str,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Take back what is left of a grant, for good; returns the ``void`` entry."""
        ledger = self._ledger
        return self._perform(
            commands.void_grant(
                ledger.policy,
                ledger.now(),
                grant_id,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        ttl: timedelta = DEFAULT_RESERVATION_TTL,
        feature: str | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` tokens until :meth:`commit`, :meth:`release` or ``ttl``."""
        ledger = self._ledger
        return self._perform(
            commands.reserve(
                ledger.policy,
                ledger.now(),
                user_id,
                amount,
                ttl=ttl,
                feature=feature,
                idempotency_key=idempotency_key,
                thresholds=ledger.thresholds,
            )
        )

    def commit(self, reservation_id: str, actual_amount: int) -> DeductResult:
        """Spend ``actual_amount`` of a hold and release the rest (your transaction stays open)."""
        ledger = self._ledger
        return self._perform(
            commands.commit(
                ledger.policy, ledger.now(), reservation_id, actual_amount, ledger.thresholds
            )
        )

    def release(self, reservation_id: str) -> DeductResult:
        """Give a hold back whole."""
        ledger = self._ledger
        return self._perform(commands.release(ledger.policy, ledger.now(), reservation_id))

    def refund(
        self,
        transaction_id: int,
        amount: int | None = None,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Reverse all (by default) or part of a successful deduction."""
        ledger = self._ledger
        return self._perform(
            commands.refund(
                ledger.policy,
                ledger.now(),
                transaction_id,
                amount,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    def reset_if_needed(self, user_id: str) -> bool:
        """Store the account's pending reset, if any."""
        ledger = self._ledger
        return self._perform(commands.reset_if_needed(ledger.policy, ledger.now(), user_id))

    # reads (they see this transaction's uncommitted writes)

    def history(
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
        """Ledger entries, newest first, this transaction's own included."""
        return self._perform(
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

    def notifications(self, *, after: int = 0, limit: int = 100) -> list[Notification]:
        """Notifications with an id above ``after``, this transaction's own included."""
        return self._perform(commands.notifications(after, limit))

    def notification_cursor(self, consumer: str) -> int:
        """The id ``consumer`` last acknowledged, as this transaction sees it."""
        return self._perform(commands.notification_cursor(consumer))

    def acknowledge_notifications(self, consumer: str, up_to: int) -> int:
        """Move ``consumer``'s cursor to ``up_to``, committed with your transaction."""
        return self._perform(commands.acknowledge_notifications(consumer, up_to))

    def reconcile(self, user_id: str | None = None) -> list[Discrepancy]:
        """Where stored balances differ from the log, as this transaction sees both."""
        return self._perform(commands.reconcile(user_id))

    def health(self) -> Health:
        """Total, current and stale accounts, as this transaction sees them."""
        ledger = self._ledger
        return self._perform(commands.health(ledger.policy, ledger.now()))

    def alerts(
        self,
        *,
        stale_after: timedelta = timedelta(days=1),
        stale_threshold: int = 0,
        failed_window: timedelta = timedelta(hours=1),
        failed_threshold: int = 10,
        usage_ratio: float = 0.9,
        high_usage_threshold: int | None = None,
    ) -> AlertReport:
        """The guide's three alerts, as this transaction sees the ledger."""
        ledger = self._ledger
        return self._perform(
            commands.alerts(
                ledger.policy,
                ledger.now(),
                stale_after=stale_after,
                stale_threshold=stale_threshold,
                failed_window=failed_window,
                failed_threshold=failed_threshold,
                usage_ratio=usage_ratio,
                high_usage_threshold=high_usage_threshold,
            )
        )


@contextmanager
def within(
    ledger: TokenLedger, connection: object, *, schema: str | None = None
) -> Iterator[LedgerInTransaction]:
    """The ledger's calls inside the transaction ``connection`` is in; see the module's text.

    ``connection`` is one of: a ``psycopg.Connection`` (psycopg 3); a
    ``sqlite3.Connection`` or ``sqlite_utils.Database``; a SQLAlchemy 2
    ``Connection`` or ORM ``Session`` (dialects ``postgresql+psycopg`` and
    ``sqlite``); Django's connection inside ``transaction.atomic()``
    (PostgreSQL on psycopg 3, or SQLite). ``schema`` names the PostgreSQL
    schema of the tables; it defaults to the ledger's own (``public`` for a
    ledger that is not on PostgreSQL) and is refused for SQLite.

    A connection without a transaction open is handled the way its driver
    handles your next statement: one that opens a transaction implicitly
    (psycopg without autocommit, SQLAlchemy's autobegin, ``sqlite3``'s
    default transaction control) gets that transaction opened now, and left
    open for you to commit or roll back; one that commits each statement on
    its own is refused with :class:`TransactionRequired`. On SQLite the
    database's write lock is taken on entry (``BEGIN IMMEDIATE`` when a
    transaction is opened here), so no call inside fails later with
    ``SQLITE_BUSY``; a transaction that has already read and cannot take it
    gets :class:`WriteLockUnavailable` at once.

    The tables must exist at this token-ledger's version: a ledger opened on
    the database once migrates them; otherwise :class:`SchemaNotMigrated`.
    """
    transaction, before_call = join(ledger, connection, schema)
    tokens = LedgerInTransaction(ledger, transaction, before_call)
    try:
        yield tokens
    finally:
        tokens._end()


# retrying the whole transaction

_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def is_transient(error: BaseException) -> bool:
    """Whether running the whole transaction again may succeed where ``error`` stopped it.

    True for :class:`~token_ledger.TransientStorageError` (which includes
    :class:`WriteLockUnavailable`) and for the driver errors of your own
    statements and COMMIT that mean the same: a PostgreSQL serialization
    failure (40001) or deadlock (40P01), SQLite's ``SQLITE_BUSY``, also when
    SQLAlchemy or Django wrapped them (followed through ``__cause__`` and
    SQLAlchemy's ``.orig``).
    """
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TransientStorageError):
            return True
        if getattr(current, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            return True
        if isinstance(current, sqlite3.OperationalError) and sqlite_busy(current):
            return True
        for linked in (current.__cause__, getattr(current, "orig", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return False


def retrying(transaction: Callable[[], T], *, attempts: int = WRITE_ATTEMPTS) -> T:
    """Run ``transaction()`` again from the start after a transient failure, up to ``attempts``.

    ``transaction`` must be the whole of your transaction, from its BEGIN to
    its COMMIT (or its ``with`` block), so that each attempt starts afresh::

        def place_order() -> int:
            with conn.transaction():
                order_id = insert_order(conn)
                with ledger.within(conn) as tokens:
                    tokens.deduct("u1", 5, idempotency_key=f"order-{order_id}")
                return order_id

        order_id = retrying(place_order)

    The pauses are random and double from 5 ms (at most 0.5 s), as the
    ledger's own retries; any other error is raised at once, and so is the
    last transient one.
    """
    checked = _validation.positive_int(attempts, "attempts")
    for attempt in range(1, checked):
        try:
            return transaction()
        except Exception as error:
            if not is_transient(error):
                raise
        time.sleep(random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt)))
    return transaction()
