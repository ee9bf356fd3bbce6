"""The errors of ``ledger.within(connection)``, and how a driver's SQLITE_BUSY is told apart.

Re-exported by :mod:`token_ledger.within`, their public home; they live here so that the
engines' joins and the resolution of connections can raise them without importing the
facade.
"""

from __future__ import annotations

import sqlite3

from token_ledger.errors import InvalidInput, SchemaVersionError, TransientStorageError


class UnsupportedConnection(InvalidInput, TypeError):
    """``within`` was given something that is not a connection it can join."""


class TransactionRequired(InvalidInput):
    """The connection has no transaction ``within`` can join, or the ``within`` block ended.

    A connection that commits every statement on its own (psycopg's or
    SQLAlchemy's autocommit, ``sqlite3`` with ``isolation_level=None`` outside
    ``BEGIN``, Django outside ``transaction.atomic()``) would commit each
    deduction alone and release the account's lock at once; a failed
    transaction accepts no statement until it is rolled back.
    """


class SchemaNotMigrated(SchemaVersionError):
    """The ledger's tables are missing, or older than this token-ledger.

    ``within`` never creates or migrates tables inside your transaction: open
    a ledger on the database once (``TokenLedger.postgres(url)``,
    ``TokenLedger.sqlite(path)``, ``token-ledger init``), which migrates them.
    """


class WriteLockUnavailable(TransientStorageError):
    """SQLite: the caller's transaction cannot take the database's write lock.

    A transaction that has read before writing holds a snapshot; SQLite can
    upgrade it to a writer only while nobody else is writing and nothing was
    committed since its first read, and it refuses at once otherwise, whatever
    the busy timeout. Begin such transactions with ``BEGIN IMMEDIATE`` (or
    call ``within`` before their first read), and run them with
    :func:`retrying`.
    """


_SQLITE_BUSY = 5


def sqlite_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or one of its extended codes (a stale snapshot, a recovery)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and later
    if code is not None:
        return int(code) & 0xFF == _SQLITE_BUSY
    return str(error).startswith("database is locked")
