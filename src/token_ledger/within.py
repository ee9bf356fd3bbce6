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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from token_ledger import _validation, operations
from token_ledger._within_drivers import join
from token_ledger._within_errors import (
    SchemaNotMigrated,
    TransactionRequired,
    UnsupportedConnection,
    WriteLockUnavailable,
    sqlite_busy,
)
from token_ledger.calls import LedgerCalls
from token_ledger.commands import Command
from token_ledger.errors import TransientStorageError
from token_ledger.repository import TokenRepository, UnitOfWork
from token_ledger.storage import RETRY_BASE_DELAY, RETRY_MAX_DELAY, WRITE_ATTEMPTS

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


class LedgerInTransaction(LedgerCalls):
    """The ledger's calls, run in savepoints of a transaction the caller owns.

    Made by :func:`within` (``ledger.within(connection)``) and usable only
    inside its ``with`` block. Every call takes the ledger's clock at the
    moment it is made and applies its policy; a write's locks (the account's
    row on PostgreSQL, the database's write lock on SQLite) are held until
    the caller's transaction ends. Nothing here retries: a
    :class:`~token_ledger.TransientStorageError` means "run the whole
    transaction again" (:func:`retrying`). A refused deduction writes its failed
    entry in your transaction (kept if you commit) and raises
    :class:`~token_ledger.InsufficientTokens`; your transaction stays usable. The
    calls are :class:`~token_ledger.TokenLedger`'s (:class:`~token_ledger.calls.LedgerCalls`).
    """

    def __init__(
        self,
        ledger: TokenLedger,
        transaction: CallerTransaction,
        before_call: Callable[[], object] | None = None,
    ) -> None:
        self._ledger = ledger
        self.policy = ledger.policy
        self.thresholds = ledger.thresholds
        self._transaction: CallerTransaction | None = transaction
        self._before_call = before_call

    def now(self) -> datetime:
        """The ledger's clock: every call takes it at the moment it is made."""
        return self._ledger.now()

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
