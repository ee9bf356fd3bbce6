"""``ledger.within(connection)`` on SQLite: the caller's transaction, holding the write lock.

SQLite has one writer at a time. A transaction that starts deferred and reads
before it writes holds a snapshot, and turning it into the writer is an
upgrade that SQLite refuses at once with ``SQLITE_BUSY`` (whatever the busy
timeout) when another connection is writing or has committed since the first
read. So the write lock is taken when ``within`` is entered, before the
ledger reads anything: either the caller's transaction is the writer from
then until it ends, or entering fails with :class:`WriteLockUnavailable`,
never a ``SQLITE_BUSY`` in the middle of a deduction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

from token_ledger._rows import TRANSACTION_COLUMNS, history_conditions
from token_ledger._sqlite_migrations import KNOWN_MIGRATIONS, MIGRATION_SET
from token_ledger._usage_sql import sqlite_usage
from token_ledger._within_errors import (
    SchemaNotMigrated,
    TransactionRequired,
    WriteLockUnavailable,
    sqlite_busy,
)
from token_ledger.account import TokenAccount
from token_ledger.errors import SchemaVersionError, StorageError
from token_ledger.repository import AccountFilter, HistoryQuery, UsageQuery
from token_ledger.sqlite import (
    ROWS,
    WRITE,
    SQLiteUnitOfWork,
    _select_accounts,
    _translated_errors,
    _where,
)
from token_ledger.thresholds import Notification
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageRow

_LEGACY = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", -1)  # Python 3.12's constant
# A write that changes nothing still makes its transaction the writer.
TAKE_WRITE_LOCK = "UPDATE user_tokens SET user_id = user_id WHERE 0"
SAVEPOINT = "token_ledger"
NOT_MIGRATED = (
    "this SQLite database {found}. within() never creates or migrates tables inside your"
    " transaction: open a ledger on the file once (TokenLedger.sqlite(path), or"
    " token-ledger --db PATH init), which migrates them"
)


def _commits_each_statement(conn: sqlite3.Connection) -> bool:
    """Whether, outside BEGIN, every statement of ``conn`` commits on its own.

    Python 3.12's ``autocommit=True`` does; so does ``isolation_level=None``
    under the legacy transaction control that every earlier Python has.
    ``autocommit=False`` keeps a transaction open at all times.
    """
    autocommit = getattr(conn, "autocommit", _LEGACY)
    if autocommit == _LEGACY:
        return conn.isolation_level is None
    return bool(autocommit)


@contextmanager
def _library_settings(conn: sqlite3.Connection) -> Iterator[None]:
    """Plain tuples and ``str`` for the library's statements, whatever the application set."""
    row_factory, text_factory = conn.row_factory, conn.text_factory
    conn.row_factory, conn.text_factory = None, str
    try:
        yield
    finally:
        conn.row_factory, conn.text_factory = row_factory, text_factory


class SQLiteCallerTransaction:
    """The caller's SQLite transaction, as a repository whose units of work are savepoints."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def join(cls, conn: sqlite3.Connection, origin: str) -> SQLiteCallerTransaction:
        """Join the transaction ``conn`` is in (or open it), holding the write lock."""
        with _translated_errors(), _library_settings(conn):
            began = False
            if not conn.in_transaction:
                if _commits_each_statement(conn):
                    raise TransactionRequired(
                        f"{origin} commits every statement on its own outside BEGIN"
                        " (isolation_level=None, or autocommit=True): begin your transaction"
                        ' first, with conn.execute("BEGIN IMMEDIATE")'
                    )
                # sqlite3's legacy transaction control opens a transaction before the next
                # write and leaves it for the application to commit: open it now, as the writer.
                conn.execute("BEGIN IMMEDIATE")
                began = True
            try:
                _take_write_lock(conn, origin)
                _check_schema(conn)
            except BaseException:
                if began and conn.in_transaction:
                    conn.execute("ROLLBACK")  # it was opened here and holds nothing of yours
                raise
        return cls(conn)

    @contextmanager
    def savepoint(self) -> Iterator[SQLiteUnitOfWork]:
        """A savepoint of the caller's transaction: released on success, rolled back to on error.

        After some errors (a full disk, an I/O error) SQLite rolls the whole
        transaction back itself; there is no savepoint left then, and the error
        says that the caller's transaction is gone too.
        """
        conn = self._conn
        with _translated_errors(), _library_settings(conn):
            conn.execute(f"SAVEPOINT {SAVEPOINT}")
            try:
                yield SQLiteUnitOfWork(conn)
            except BaseException as error:
                if not conn.in_transaction:
                    raise StorageError(
                        f"SQLite rolled back your whole transaction after an error ({error}):"
                        " nothing of it is stored; run it again from the start"
                    ) from error
                conn.execute(f"ROLLBACK TO {SAVEPOINT}")
                conn.execute(f"RELEASE {SAVEPOINT}")
                raise
            conn.execute(f"RELEASE {SAVEPOINT}")

    unit_of_work = savepoint

    # The reads of a repository, on the caller's connection, inside a savepoint.

    def get_account(self, user_id: str) -> TokenAccount | None:
        return SQLiteUnitOfWork(self._conn).load_account(user_id)

    def history(self, query: HistoryQuery) -> list[Transaction]:
        where, parameters = _where(history_conditions(query))
        rows = self._conn.execute(
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions {where}"
            " ORDER BY id DESC LIMIT ?",
            (*parameters, query.limit),
        ).fetchall()
        return [ROWS.transaction(row) for row in rows]

    def count_transactions(self, query: HistoryQuery) -> int:
        where, parameters = _where(history_conditions(attrs.evolve(query, before_id=None)))
        statement = f"SELECT count(*) FROM token_transactions {where}"
        return int(self._conn.execute(statement, parameters).fetchone()[0])

    def count_accounts(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM user_tokens").fetchone()[0])

    def notifications(self, after: int, limit: int) -> list[Notification]:
        return SQLiteUnitOfWork(self._conn).notifications(after, limit)

    def notification_cursor(self, consumer: str) -> int:
        return SQLiteUnitOfWork(self._conn).notification_cursor(consumer)

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        return sqlite_usage(self._conn, query, WRITE)

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        return _select_accounts(self._conn, where, after_user_id, limit)

    def close(self) -> None:
        """Nothing to close: the connection and its transaction are the caller's."""


def _take_write_lock(conn: sqlite3.Connection, origin: str) -> None:
    """Make the caller's transaction the writer now, before the ledger reads anything.

    A write that changes nothing takes the lock as any write does: at once when
    the transaction holds it already, waiting up to the busy timeout when the
    transaction has not read yet. A transaction that has read can become the
    writer only while nobody writes and nothing was committed since; otherwise
    SQLite refuses at once, whatever the timeout, and so does this.
    """
    started = time.monotonic()
    try:
        conn.execute(TAKE_WRITE_LOCK)
    except sqlite3.OperationalError as error:
        if sqlite_busy(error):
            waited = time.monotonic() - started
            timeout = int(conn.execute("PRAGMA busy_timeout").fetchone()[0]) / 1000
            if timeout and waited >= timeout / 2:
                raise WriteLockUnavailable(
                    f"another connection held SQLite's write lock for longer than the busy"
                    f" timeout of {origin} ({timeout:g} s; {error}): run the transaction again"
                    " from the start (token_ledger.within.retrying), or give it a longer"
                    " timeout"
                ) from error
            raise WriteLockUnavailable(
                f"SQLite cannot make the transaction of {origin} the writer ({error}): it read"
                " the database before writing, and another connection is writing or has"
                " written since, so its snapshot cannot become the writer. Begin such"
                " transactions with BEGIN IMMEDIATE (or write, or enter ledger.within(),"
                " before their first read), and run them again from the start"
                " (token_ledger.within.retrying)"
            ) from error
        table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_tokens'"
        if conn.execute(table).fetchone() is None:
            raise SchemaNotMigrated(
                NOT_MIGRATED.format(found="has no token-ledger tables")
            ) from error
        raise


def _check_schema(conn: sqlite3.Connection) -> None:
    """Refuse a database that lacks one of the library's migrations, or has newer ones."""
    applied: set[str] = set()
    table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlite_migrations'"
    if conn.execute(table).fetchone() is not None:
        rows = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,)
        )
        applied = {str(row[0]) for row in rows}
    unknown = applied - KNOWN_MIGRATIONS
    if unknown:
        raise SchemaVersionError(
            "this database was written by a newer token-ledger (migrations "
            f"{sorted(unknown)} are unknown here); upgrade token-ledger to spend in it"
        )
    missing = KNOWN_MIGRATIONS - applied
    if missing:
        raise SchemaNotMigrated(
            NOT_MIGRATED.format(found=f"lacks the migrations {sorted(missing)}")
        )
