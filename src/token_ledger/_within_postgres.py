"""``ledger.within(connection)`` on PostgreSQL: savepoints of the caller's transaction.

The statements are the engine's own (:class:`~token_ledger._postgres_statements.Statements`,
:class:`~token_ledger.postgres.PostgresUnitOfWork`), run on the caller's
connection: a write locks the account's row (``SELECT ... FOR UPDATE``) and the
lock lasts until the caller's transaction ends, since a savepoint's locks
belong to its transaction. psycopg is imported here only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import attrs
import psycopg
from psycopg import sql
from psycopg.pq import Format, TransactionStatus

from token_ledger._postgres_errors import translated_errors
from token_ledger._postgres_migrations import MIGRATIONS, MIGRATIONS_TABLE
from token_ledger._postgres_rows import ROWS, sql_conditions
from token_ledger._postgres_statements import Statements
from token_ledger._rows import account_conditions, history_conditions
from token_ledger._within_errors import SchemaNotMigrated, TransactionRequired
from token_ledger.account import TokenAccount
from token_ledger.errors import SchemaVersionError, StorageError, TransientStorageError
from token_ledger.postgres import PostgresUnitOfWork, _fetch, _with_balances
from token_ledger.repository import AccountFilter, HistoryQuery, UsageQuery
from token_ledger.thresholds import Notification
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageRow, rows_of

# The types of the columns the library reads, loaded the way psycopg loads them by default.
LIBRARY_TYPES = (
    *("int2", "int4", "int8", "bool", "text", "varchar", "name"),
    *("timestamptz", "json", "jsonb"),
)


def _default_loaders() -> tuple[tuple[int, type[Any]], ...]:
    loaders = []
    for name in LIBRARY_TYPES:
        info = psycopg.adapters.types.get(name)
        assert info is not None  # built into psycopg
        loader = psycopg.adapters.get_loader(info.oid, Format.TEXT)
        assert loader is not None
        loaders.append((info.oid, loader))
    return tuple(loaders)


DEFAULT_LOADERS = _default_loaders()

# Schemas found at the library's version, per connection: checked once, not at every block.
_verified: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
    weakref.WeakKeyDictionary()
)
_verified_lock = threading.Lock()
_statements: dict[str, Statements] = {}


class _LibraryCursors:
    """The caller's connection as the library's statements use it: plain psycopg cursors
    that read rows with psycopg's default loaders.

    An application may register loaders of its own on its connection (Django loads
    ``jsonb`` as text, and timestamps in its own zone or naive); the ledger's rows are
    read back the way the ledger wrote them all the same. Only used when the
    connection's loaders differ from psycopg's; anything but ``cursor`` is the
    connection's own.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def cursor(self, *, row_factory: Any) -> psycopg.Cursor[Any]:
        cursor = psycopg.Cursor(self._conn, row_factory=row_factory)
        for oid, loader in DEFAULT_LOADERS:
            cursor.adapters.register_loader(oid, loader)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _library_view(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    if all(conn.adapters.get_loader(oid, Format.TEXT) is cls for oid, cls in DEFAULT_LOADERS):
        return conn
    return cast("psycopg.Connection[Any]", _LibraryCursors(conn))


def _must_retry_whole(error: TransientStorageError) -> TransientStorageError:
    return TransientStorageError(
        f"{error}. The ledger cannot run it again inside your transaction: roll the"
        " transaction back and run all of it again (token_ledger.within.retrying does)"
    )


class PostgresCallerTransaction:
    """The caller's PostgreSQL transaction, as a repository whose units of work are savepoints."""

    def __init__(self, conn: psycopg.Connection[Any], statements: Statements) -> None:
        self._conn = conn
        self._library = _library_view(conn)
        self._sql = statements

    @classmethod
    def join(cls, conn: psycopg.Connection[Any], schema: str) -> PostgresCallerTransaction:
        """Join the transaction ``conn`` is in, or open it the way psycopg would."""
        if conn.closed:
            raise StorageError("the psycopg.Connection is closed: reconnect")
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise TransactionRequired(
                "the connection's transaction has failed (one of its statements raised):"
                " roll it back, then run it again"
            )
        if status == TransactionStatus.IDLE:
            if conn.autocommit:
                raise TransactionRequired(
                    "the connection is in autocommit mode outside a transaction, so every"
                    " statement would commit on its own: open a transaction first, `with"
                    " conn.transaction():` (psycopg) or `with engine.begin() as conn:`"
                    " (SQLAlchemy)"
                )
            # Without autocommit psycopg opens a transaction with a connection's first
            # statement and leaves it for the application to commit: open it now, so that
            # the savepoints below belong to it rather than being transactions of their own.
            with translated_errors():
                conn.execute("SELECT 1")
        elif status != TransactionStatus.INTRANS:
            raise StorageError(
                f"the connection cannot take a statement now (transaction status {status.name})"
            )
        statements = _statements.get(schema)
        if statements is None:
            statements = _statements.setdefault(schema, Statements(schema))
        joined = cls(conn, statements)
        joined._check_schema(schema)
        return joined

    def _check_schema(self, schema: str) -> None:
        """Refuse tables that are missing or not at this library's version."""
        with _verified_lock:
            if schema in _verified.get(self._conn, ()):
                return
        latest = MIGRATIONS[-1].version
        table = sql.Identifier(schema, MIGRATIONS_TABLE)
        with self.savepoint():
            found = _fetch(
                self._library,
                sql.SQL(
                    "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s"
                ).format(),
                (schema, MIGRATIONS_TABLE),
            )
            version = 0
            if found:
                query = sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(table)
                version = int(_fetch(self._library, query, ())[0][0])
        if version > latest:
            raise SchemaVersionError(
                f"schema {schema!r} is at version {version}, newer than this token-ledger"
                f" knows ({latest}): upgrade token-ledger"
            )
        if version < latest:
            found_text = (
                "has no token-ledger tables" if version == 0 else f"is at version {version}"
            )
            raise SchemaNotMigrated(
                f"schema {schema!r} {found_text}; this token-ledger needs version {latest}."
                " within() never creates or migrates tables inside your transaction: open a"
                f" ledger on the database once (TokenLedger.postgres(url, schema={schema!r}),"
                " or token-ledger --db URL init), which migrates them"
            )
        with _verified_lock:
            _verified.setdefault(self._conn, set()).add(schema)

    @contextmanager
    def savepoint(self) -> Iterator[PostgresUnitOfWork]:
        """A savepoint of the caller's transaction: released on success, rolled back to on error.

        psycopg's ``transaction()`` inside an open transaction is a SAVEPOINT (``join``
        made sure one is open), and keeps psycopg's own bookkeeping of nested blocks.
        """
        try:
            with translated_errors(), self._conn.transaction():
                yield PostgresUnitOfWork(self._library, self._sql)
        except TransientStorageError as error:
            raise _must_retry_whole(error) from error.__cause__

    unit_of_work = savepoint

    # The reads of a repository, on the caller's connection, inside a savepoint.

    def _accounts(self, query: sql.Composed, params: Sequence[Any]) -> list[TokenAccount]:
        accounts = [ROWS.account(row) for row in _fetch(self._library, query, params)]
        return _with_balances(self._library, self._sql, accounts)

    def get_account(self, user_id: str) -> TokenAccount | None:
        accounts = self._accounts(self._sql.select_account, (user_id,))
        return accounts[0] if accounts else None

    def history(self, query: HistoryQuery) -> list[Transaction]:
        conditions, params = sql_conditions(history_conditions(query))
        statement = self._sql.history_query(conditions)
        return [
            ROWS.transaction(row)
            for row in _fetch(self._library, statement, [*params, query.limit])
        ]

    def count_transactions(self, query: HistoryQuery) -> int:
        conditions, params = sql_conditions(history_conditions(attrs.evolve(query, before_id=None)))
        return int(_fetch(self._library, self._sql.count_query(conditions), params)[0][0])

    def count_accounts(self) -> int:
        return int(_fetch(self._library, self._sql.count_accounts, ())[0][0])

    def notifications(self, after: int, limit: int) -> list[Notification]:
        rows = _fetch(self._library, self._sql.notifications_after, (after, limit))
        return [ROWS.notification(row) for row in rows]

    def notification_cursor(self, consumer: str) -> int:
        rows = _fetch(self._library, self._sql.cursor_position, (consumer,))
        return 0 if not rows else int(rows[0][0])

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        statement, params = self._sql.usage_query(query)
        return rows_of(query, _fetch(self._library, statement, params))

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        conditions, params = sql_conditions(account_conditions(where, after_user_id))
        return self._accounts(self._sql.select_accounts(conditions), [*params, limit])

    def close(self) -> None:
        """Nothing to close: the connection and its transaction are the caller's."""
