"""How the PostgreSQL engines tell a connection's state and a driver's error apart.

The one home of the translation of psycopg's errors into token-ledger's, and of
"lost a race" (which the shortcuts fall back on, and units of work retry), for the
sync and the asyncio engine alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.errors import DeadlockDetected, Diagnostic, SerializationFailure, UniqueViolation
from psycopg.pq import ConnStatus, TransactionStatus

from token_ledger.errors import StorageError, TransientStorageError

IDEMPOTENCY_KEY_CONSTRAINT = "token_transactions_idempotency_key_key"
CROSSING_CONSTRAINT = "token_notifications_crossing_key"
BUSY = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


def storage_error(
    error: psycopg.Error, given: psycopg.Connection[Any] | None = None
) -> StorageError:
    if given is not None and given.closed:
        # A pool replaces a dead connection; the caller's own one cannot be reopened.
        return StorageError(
            f"the psycopg.Connection given to token-ledger is closed ({error}): reconnect and"
            " open the ledger on the new connection, or give it a ConnectionPool, which"
            " replaces connections the server has closed"
        )
    if isinstance(error, SerializationFailure | DeadlockDetected):
        return TransientStorageError(f"PostgreSQL lost a race, try again: {error}")
    if (
        isinstance(error, UniqueViolation)
        and error.diag.constraint_name == IDEMPOTENCY_KEY_CONSTRAINT
    ):
        # A concurrent unit of work stored the key first; on the next attempt the
        # domain finds its entry and replays it or reports the conflict.
        return TransientStorageError(f"idempotency key stored concurrently: {error}")
    if isinstance(error, UniqueViolation) and error.diag.constraint_name == CROSSING_CONSTRAINT:
        # Two writers both saw the same crossing, which the account's lock rules out for
        # the library's own: the next attempt sees the account as the first one left it.
        return TransientStorageError(f"threshold notification stored concurrently: {error}")
    return StorageError(f"PostgreSQL failed: {error}")


@contextmanager
def translated_errors(given: psycopg.Connection[Any] | None = None) -> Iterator[None]:
    """The one place where psycopg errors become token-ledger errors.

    ``given`` is the connection the caller gave, if the error happened on it.
    """
    try:
        yield
    except psycopg.Error as error:
        raise storage_error(error, given) from error


@contextmanager
def begun(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    with conn.transaction():
        yield conn


def alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server has not closed ``conn`` while it sat idle, found without a round trip.

    A server that closes a connection (``pg_terminate_backend``, a restart) sends
    its farewell, a FATAL error message, and then the end of the stream, which wait on
    the socket: reading what is there shows either. The message can come alone (the
    backend leaves ``pg_stat_activity`` before it closes its socket); libpq, parsing it,
    hands an error that arrives while idle to the notice handlers.
    """
    farewell: list[Diagnostic] = []

    def heard(diagnostic: Diagnostic) -> None:
        if diagnostic.severity_nonlocalized in ("FATAL", "PANIC"):
            farewell.append(diagnostic)

    pgconn = conn.pgconn
    conn.add_notice_handler(heard)
    try:
        pgconn.consume_input()
        pgconn.is_busy()  # parses what was read
        pgconn.consume_input()
    except psycopg.OperationalError:
        return False
    finally:
        conn.remove_notice_handler(heard)
    return not farewell and pgconn.status == ConnStatus.OK


def lost_a_race(error: psycopg.Error) -> bool:
    """Whether a statement failed only because a concurrent one came first."""
    if isinstance(error, SerializationFailure | DeadlockDetected):
        return True
    return (
        isinstance(error, UniqueViolation)
        and error.diag.constraint_name == IDEMPOTENCY_KEY_CONSTRAINT
    )
