"""The SQLite engine: the embedded default, safe across threads and processes.

Schema and migrations go through sqlite-utils; the hot path uses the
standard library ``sqlite3`` connection underneath it directly. Every write
starts with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
writes has to upgrade its lock, and that upgrade fails with SQLITE_BUSY no
matter how long the busy timeout is. Within the write lock the domain's
values are current, so storing them cannot lose a concurrent deduction.
"""

from __future__ import annotations

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

from token_ledger.account import TokenAccount
from token_ledger.errors import InvalidInput, SchemaVersionError, StorageError
from token_ledger.repository import HistoryQuery, StaleCutoffs
from token_ledger.transactions import Transaction

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
MIGRATION_SET = "token_ledger"

ACCOUNT_COLUMNS = (
    "user_id, monthly_limit, monthly_tokens_used, last_monthly_reset,"
    " created_at, updated_at, reset_anchor"
)
TRANSACTION_COLUMNS = (
    "user_id, operation_type, amount, created_at, balance_after, success, feature,"
    " operation_context, idempotency_key, id"
)

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


def format_instant(value: datetime) -> str:
    """Fixed-width UTC text, so that SQLite compares instants as strings correctly."""
    return value.astimezone(timezone.utc).isoformat(sep=" ", timespec="microseconds")


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _account(row: Sequence[Any]) -> TokenAccount:
    return TokenAccount(
        user_id=row[0],
        monthly_limit=row[1],
        monthly_tokens_used=row[2],
        last_monthly_reset=parse_instant(row[3]),
        created_at=parse_instant(row[4]),
        updated_at=parse_instant(row[5]),
        reset_anchor=None if row[6] is None else parse_instant(row[6]),
    )


def _transaction(row: Sequence[Any]) -> Transaction:
    return Transaction(
        user_id=row[0],
        operation_type=row[1],
        amount=row[2],
        created_at=parse_instant(row[3]),
        balance_after=row[4],
        success=bool(row[5]),
        feature=row[6],
        operation_context=json.loads(row[7]),
        idempotency_key=row[8],
        id=row[9],
    )


@contextmanager
def _translated_errors() -> Iterator[None]:
    """The one place where ``sqlite3`` errors become token-ledger errors."""
    try:
        yield
    except sqlite3.Error as error:
        raise StorageError(f"SQLite failed: {error}") from error


class _SQLiteUnitOfWork:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def load_account(self, user_id: str) -> TokenAccount | None:
        row = self._conn.execute(
            f"SELECT {ACCOUNT_COLUMNS} FROM user_tokens WHERE user_id = ?", (user_id,)
        ).fetchone()
        return None if row is None else _account(row)

    def insert_account(self, account: TokenAccount) -> bool:
        cursor = self._conn.execute(
            f"INSERT INTO user_tokens ({ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO NOTHING",
            (
                account.user_id,
                account.monthly_limit,
                account.monthly_tokens_used,
                format_instant(account.last_monthly_reset),
                format_instant(account.created_at),
                format_instant(account.updated_at),
                None if account.reset_anchor is None else format_instant(account.reset_anchor),
            ),
        )
        return cursor.rowcount == 1

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        self._conn.executemany(
            "UPDATE user_tokens SET monthly_limit = ?, monthly_tokens_used = ?,"
            " last_monthly_reset = ?, updated_at = ? WHERE user_id = ?",
            [
                (
                    account.monthly_limit,
                    account.monthly_tokens_used,
                    format_instant(account.last_monthly_reset),
                    format_instant(account.updated_at),
                    account.user_id,
                )
                for account in accounts
            ],
        )

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        stored = []
        for entry in entries:
            cursor = self._conn.execute(
                "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
                " balance_after, success, feature, operation_context, idempotency_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.user_id,
                    entry.operation_type.value,
                    entry.amount,
                    format_instant(entry.created_at),
                    entry.balance_after,
                    int(entry.success),
                    entry.feature,
                    COMPACT_JSON.encode(entry.operation_context),
                    entry.idempotency_key,
                ),
            )
            stored.append(attrs.evolve(entry, id=cursor.lastrowid))
        return stored

    def find_by_idempotency_key(self, key: str) -> Transaction | None:
        row = self._conn.execute(
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions WHERE idempotency_key = ?",
            (key,),
        ).fetchone()
        return None if row is None else _transaction(row)

    def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        rows = self._conn.execute(
            f"SELECT {ACCOUNT_COLUMNS} FROM user_tokens"
            " WHERE user_id > ? AND ("
            "  (reset_anchor IS NULL AND last_monthly_reset < ?)"
            "  OR (reset_anchor IS NOT NULL AND last_monthly_reset <= ?))"
            " ORDER BY user_id LIMIT ?",
            (
                after_user_id or "",
                format_instant(cutoffs.calendar),
                format_instant(cutoffs.anchored),
                limit,
            ),
        ).fetchall()
        return [_account(row) for row in rows]


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
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "memory":
                conn.execute("PRAGMA journal_mode = WAL")
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
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def unit_of_work(self) -> Iterator[_SQLiteUnitOfWork]:
        with self._write() as conn:
            yield _SQLiteUnitOfWork(conn)

    def get_account(self, user_id: str) -> TokenAccount | None:
        with self._lock, _translated_errors():
            return _SQLiteUnitOfWork(self.db.conn).load_account(user_id)

    def history(self, query: HistoryQuery) -> list[Transaction]:
        conditions = []
        parameters: list[object] = []
        for column, value in (
            ("user_id = ?", query.user_id),
            ("operation_type = ?", query.operation_type and query.operation_type.value),
            ("feature = ?", query.feature),
            ("success = ?", None if query.success is None else int(query.success)),
            ("created_at >= ?", query.since and format_instant(query.since)),
            ("created_at < ?", query.until and format_instant(query.until)),
            ("id < ?", query.before_id),
        ):
            if value is not None:
                conditions.append(column)
                parameters.append(value)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = (
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions {where} ORDER BY id DESC LIMIT ?"
        )
        with self._lock, _translated_errors():
            rows = self.db.conn.execute(sql, (*parameters, query.limit)).fetchall()
        return [_transaction(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()
