"""The SQLite engine: the embedded default, safe across threads and processes.

Schema and migrations go through sqlite-utils; the hot path uses the
standard library ``sqlite3`` connection underneath it directly. Every write
starts with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
writes has to upgrade its lock, and that upgrade fails with SQLITE_BUSY no
matter how long the busy timeout is. Within the write lock the domain's
values are current, so storing them cannot lose a concurrent deduction.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import sqlite_utils
from sqlite_utils.migrations import Migrations

from token_ledger._rows import (
    ACCOUNT_COLUMNS,
    GRANT_COLUMNS,
    NEW_TRANSACTION_COLUMNS,
    RESERVATION_COLUMNS,
    TRANSACTION_COLUMNS,
    Condition,
    RowReader,
    RowWriter,
    account_conditions,
    history_conditions,
)
from token_ledger.account import TokenAccount
from token_ledger.errors import InvalidInput, SchemaVersionError, StorageError
from token_ledger.grants import Grant, Reservation
from token_ledger.repository import AccountFilter, HistoryQuery, StaleCutoffs
from token_ledger.transactions import Transaction

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
MIGRATION_SET = "token_ledger"

MAX_PARAMETERS = 500

# ``json.dumps`` with any option builds a new encoder per call; every ledger entry is encoded.
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

migrations = Migrations(MIGRATION_SET)
KNOWN_MIGRATIONS: set[str] = set()
MigrationFunction = Callable[[sqlite_utils.Database], None]


def _migration(name: str) -> Callable[[MigrationFunction], MigrationFunction]:
    """Register a numbered migration, remembering its name to detect newer databases."""
    KNOWN_MIGRATIONS.add(name)
    return migrations(name=name)


@_migration("0001_user_tokens_and_token_transactions")
def _create_tables(db: sqlite_utils.Database) -> None:
    now = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '+00:00')"
    db.execute(f"""
        CREATE TABLE user_tokens (
            user_id TEXT PRIMARY KEY NOT NULL,
            monthly_limit INTEGER NOT NULL CHECK (monthly_limit > 0),
            monthly_tokens_used INTEGER NOT NULL DEFAULT 0 CHECK (monthly_tokens_used >= 0),
            last_monthly_reset TEXT NOT NULL,
            reset_anchor TEXT,
            created_at TEXT NOT NULL DEFAULT {now},
            updated_at TEXT NOT NULL DEFAULT {now}
        )""")
    db.execute(f"""
        CREATE TABLE token_transactions (
            id INTEGER PRIMARY KEY,
            user_id TEXT NOT NULL,
            operation_type TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount >= 0),
            feature TEXT,
            operation_context TEXT NOT NULL DEFAULT '{{}}',
            success INTEGER NOT NULL DEFAULT 1 CHECK (success IN (0, 1)),
            created_at TEXT NOT NULL DEFAULT {now},
            idempotency_key TEXT UNIQUE,
            balance_after INTEGER NOT NULL
        )""")
    db.table("user_tokens").create_index(["last_monthly_reset"])
    db.table("token_transactions").create_index(["user_id", "id"])
    db.table("token_transactions").create_index(["operation_type", "created_at"])
    db.execute(
        "CREATE INDEX idx_token_transactions_failed"
        " ON token_transactions (created_at) WHERE success = 0"
    )


@_migration("0002_grants_reservations_overage_effects")
def _add_balances(db: sqlite_utils.Database) -> None:
    for statement in (
        "ALTER TABLE user_tokens ADD COLUMN overage_limit INTEGER NOT NULL DEFAULT 0"
        " CHECK (overage_limit >= 0)",
        "ALTER TABLE user_tokens ADD COLUMN grant_balance INTEGER NOT NULL DEFAULT 0"
        " CHECK (grant_balance >= 0)",
        "ALTER TABLE user_tokens ADD COLUMN reserved_tokens INTEGER NOT NULL DEFAULT 0"
        " CHECK (reserved_tokens >= 0)",
        "ALTER TABLE token_transactions ADD COLUMN effects TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE token_transactions ADD COLUMN reference TEXT",
        # entries written before effects existed: deductions used, resets cleared
        """UPDATE token_transactions SET effects = '{"usage":' || amount || '}'
           WHERE operation_type = 'deduct' AND success = 1""",
        """UPDATE token_transactions SET effects = '{"usage":-' || amount || '}'
           WHERE operation_type = 'reset' AND amount > 0""",
        """CREATE TABLE token_grants (
            id TEXT PRIMARY KEY NOT NULL,
            user_id TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount > 0),
            remaining INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
            created_at TEXT NOT NULL,
            expires_at TEXT,
            reason TEXT
        )""",
        "CREATE INDEX idx_token_grants_live ON token_grants (user_id) WHERE remaining > 0",
        """CREATE TABLE token_reservations (
            id TEXT PRIMARY KEY NOT NULL,
            user_id TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount > 0),
            status TEXT NOT NULL,
            feature TEXT,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX idx_token_reservations_held ON token_reservations (user_id)"
        " WHERE status = 'held'",
        "CREATE INDEX idx_token_transactions_reference ON token_transactions (reference)"
        " WHERE reference IS NOT NULL",
    ):
        db.execute(statement)


def format_instant(value: datetime) -> str:
    """Fixed-width UTC text, so that SQLite compares instants as strings correctly."""
    return value.astimezone(timezone.utc).isoformat(sep=" ", timespec="microseconds")


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


ROWS = RowReader(instant=parse_instant, document=json.loads)
WRITE = RowWriter(instant=format_instant, document=COMPACT_JSON.encode, mark="?")
_TABLES = {"token_grants": "token_grants", "token_reservations": "token_reservations"}


def _among(conn: sqlite3.Connection, query: str, user_ids: list[str]) -> Iterator[Any]:
    """The rows of ``query`` (``LIVE_GRANTS``, ``HELD_RESERVATIONS``) for the user ids."""
    for start in range(0, len(user_ids), MAX_PARAMETERS):
        chunk = user_ids[start : start + MAX_PARAMETERS]
        among = f"user_id IN ({', '.join('?' * len(chunk))})"
        yield from conn.execute(query.format(**_TABLES, among=among), chunk)


def _with_balances(conn: sqlite3.Connection, accounts: list[TokenAccount]) -> list[TokenAccount]:
    return ROWS.with_balances(accounts, functools.partial(_among, conn))


@contextmanager
def _translated_errors() -> Iterator[None]:
    """The one place where ``sqlite3`` errors become token-ledger errors."""
    try:
        yield
    except sqlite3.Error as error:
        raise StorageError(f"SQLite failed: {error}") from error


def _require_wal(conn: sqlite3.Connection) -> None:
    """Refuse a file that cannot be in WAL mode: there, readers block the writer's COMMIT.

    In a rollback-journal mode a COMMIT must wait until no connection is reading, and fails
    with SQLITE_BUSY when readers outlast the busy timeout, so a mere report could make a
    deduction fail. SQLite does not raise when it cannot switch (a VFS without shared memory
    such as ``unix-dotfile``, an immutable file): it answers the mode it stayed in.
    """
    file = next(row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main")
    if not file:
        return  # in memory or temporary: no other connection can read it
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.OperationalError:
        if conn.in_transaction:
            raise
        # Another connection switching a new file at the same moment holds the lock this one
        # would upgrade to, and SQLite refuses such an upgrade at once rather than deadlock.
        # Wait for that writer as any writer waits (the busy timeout), then try again.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StorageError(
            f"SQLite keeps {file} in journal mode {mode!r} and cannot switch it to WAL;"
            " token-ledger needs WAL so that readers do not block a writer's COMMIT"
            " (in other modes a COMMIT fails with SQLITE_BUSY while anyone reads)"
        )


def _where(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    texts, parameters = WRITE.conditions(conditions)
    return (f"WHERE {' AND '.join(texts)}" if texts else ""), parameters


def _select_accounts(
    conn: sqlite3.Connection, where: AccountFilter, after_user_id: str | None, limit: int
) -> list[TokenAccount]:
    condition, parameters = _where(account_conditions(where, after_user_id))
    rows = conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM user_tokens {condition} ORDER BY user_id LIMIT ?",
        (*parameters, limit),
    ).fetchall()
    return _with_balances(conn, [ROWS.account(row) for row in rows])


class SQLiteUnitOfWork:
    """Statements on the repository's connection; in a write it holds the write lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def load_account(self, user_id: str) -> TokenAccount | None:
        row = self._conn.execute(
            f"SELECT {ACCOUNT_COLUMNS} FROM user_tokens WHERE user_id = ?", (user_id,)
        ).fetchone()
        return None if row is None else _with_balances(self._conn, [ROWS.account(row)])[0]

    def insert_account(self, account: TokenAccount) -> bool:
        cursor = self._conn.execute(
            f"INSERT INTO user_tokens ({ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO NOTHING",
            WRITE.account_row(account),
        )
        return cursor.rowcount == 1

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        # ?N is the Nth of ACCOUNT_COLUMNS; created_at and reset_anchor never change.
        self._conn.executemany(
            "UPDATE user_tokens SET monthly_limit = ?2, monthly_tokens_used = ?3,"
            " last_monthly_reset = ?4, updated_at = ?6, overage_limit = ?8, grant_balance = ?9,"
            " reserved_tokens = ?10 WHERE user_id = ?1",
            [WRITE.account_row(account) for account in accounts],
        )

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        stored = []
        for entry in entries:
            cursor = self._conn.execute(
                f"INSERT INTO token_transactions ({NEW_TRANSACTION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                WRITE.entry_row(entry),
            )
            stored.append(attrs.evolve(entry, id=cursor.lastrowid))
        return stored

    def save_grants(self, grants: Sequence[Grant]) -> None:
        self._conn.executemany(
            f"INSERT INTO token_grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining",
            [WRITE.grant_row(grant) for grant in grants],
        )

    def save_reservations(self, reservations: Sequence[Reservation]) -> None:
        self._conn.executemany(
            f"INSERT INTO token_reservations ({RESERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status",
            [WRITE.reservation_row(hold) for hold in reservations],
        )

    def find_transaction(self, transaction_id: int) -> Transaction | None:
        row = self._conn.execute(
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions WHERE id = ?",
            (transaction_id,),
        ).fetchone()
        return None if row is None else ROWS.transaction(row)

    def entries_referencing(self, reference: str) -> list[Transaction]:
        rows = self._conn.execute(
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions WHERE reference = ? ORDER BY id",
            (reference,),
        ).fetchall()
        return [ROWS.transaction(row) for row in rows]

    def find_reservation(self, reservation_id: str) -> Reservation | None:
        row = self._conn.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM token_reservations WHERE id = ?",
            (reservation_id,),
        ).fetchone()
        return None if row is None else ROWS.reservation(row)

    def find_by_idempotency_key(self, key: str) -> Transaction | None:
        row = self._conn.execute(
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions WHERE idempotency_key = ?",
            (key,),
        ).fetchone()
        return None if row is None else ROWS.transaction(row)

    def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        return _select_accounts(self._conn, AccountFilter(stale=cutoffs), after_user_id, limit)


class SQLiteRepository:
    """Accounts and the ledger in one SQLite database file (or ``":memory:"``).

    One connection serves the repository, guarded by a lock, so a single
    :class:`~token_ledger.TokenLedger` may be shared between threads. Separate
    processes each open their own repository on the same file; WAL mode and
    the busy timeout let them wait for one another instead of failing.

    ``synchronous="NORMAL"`` (the default) never corrupts the database and
    loses no commit when a process dies; only a power cut or OS crash may lose
    the last commits. ``"FULL"`` makes every commit survive power loss too,
    at the cost of an fsync per commit.
    """

    def __init__(
        self,
        database: str | Path | sqlite_utils.Database | sqlite3.Connection,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
    ) -> None:
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise InvalidInput(
                f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}"
            )
        self._lock = threading.RLock()
        with _translated_errors():
            self.db = self._open(database)
            conn = self.db.conn
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            _require_wal(conn)
            conn.execute(f"PRAGMA synchronous = {mode}")
            self._migrate()

    @staticmethod
    def _open(
        database: str | Path | sqlite_utils.Database | sqlite3.Connection,
    ) -> sqlite_utils.Database:
        if isinstance(database, sqlite_utils.Database):
            return database
        if isinstance(database, sqlite3.Connection):
            return sqlite_utils.Database(database)
        conn = sqlite3.connect(
            str(database), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        return sqlite_utils.Database(conn)

    def _migrate(self) -> None:
        """Bring the schema up to date; opening an up-to-date database takes no write lock."""
        self._refuse_newer_schema()
        if migrations.pending(self.db):
            with self._write():
                self._refuse_newer_schema()
                migrations.apply(self.db)

    def _refuse_newer_schema(self) -> None:
        unknown = {m.name for m in migrations.applied(self.db)} - KNOWN_MIGRATIONS
        if unknown:
            raise SchemaVersionError(
                "this database was written by a newer token-ledger (migrations "
                f"{sorted(unknown)} are unknown here); upgrade token-ledger to open it"
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self.db.conn
        with self._lock, _translated_errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full, I/O error, a deferred foreign key) may leave the
                # transaction open; left so, every later BEGIN of this connection would fail.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def unit_of_work(self) -> Iterator[SQLiteUnitOfWork]:
        with self._write() as conn:
            yield SQLiteUnitOfWork(conn)

    def get_account(self, user_id: str) -> TokenAccount | None:
        with self._lock, _translated_errors():
            return SQLiteUnitOfWork(self.db.conn).load_account(user_id)

    def history(self, query: HistoryQuery) -> list[Transaction]:
        where, parameters = _where(history_conditions(query))
        sql = (
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions {where} ORDER BY id DESC LIMIT ?"
        )
        with self._lock, _translated_errors():
            rows = self.db.conn.execute(sql, (*parameters, query.limit)).fetchall()
        return [ROWS.transaction(row) for row in rows]

    def count_transactions(self, query: HistoryQuery) -> int:
        where, parameters = _where(history_conditions(attrs.evolve(query, before_id=None)))
        with self._lock, _translated_errors():
            row = self.db.conn.execute(
                f"SELECT count(*) FROM token_transactions {where}", parameters
            ).fetchone()
        return int(row[0])

    def count_accounts(self) -> int:
        with self._lock, _translated_errors():
            return int(self.db.conn.execute("SELECT count(*) FROM user_tokens").fetchone()[0])

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        with self._lock, _translated_errors():
            return _select_accounts(self.db.conn, where, after_user_id, limit)

    def close(self) -> None:
        with self._lock:
            self.db.close()
