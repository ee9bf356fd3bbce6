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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import sqlite_utils

from token_ledger._rows import (
    ACCOUNT_COLUMNS,
    GRANT_COLUMNS,
    NEW_NOTIFICATION_COLUMNS,
    NEW_TRANSACTION_COLUMNS,
    NOTIFICATION_COLUMNS,
    RESERVATION_COLUMNS,
    TRANSACTION_COLUMNS,
    Condition,
    KnownFullPath,
    RowReader,
    RowWriter,
    account_conditions,
    history_conditions,
)
from token_ledger._sqlite_migrations import MIGRATION_SET as MIGRATION_SET  # also read from here
from token_ledger._sqlite_migrations import migrations, refuse_newer_schema
from token_ledger._sqlite_statements import (
    DIRECT_DEDUCTION,
    DIRECT_ENTRY,
    NEVER_DIRECT,
    PATH,
    RESET_AFTER,
    RESET_IN_SQL,
    RUN_ACCOUNTS,
    RUN_ENTRIES,
    direct_deduction,
    discrepancies,
    numbered,
)
from token_ledger._usage_sql import sqlite_usage
from token_ledger.account import TokenAccount
from token_ledger.errors import InvalidInput, StorageError
from token_ledger.grants import Grant, Reservation
from token_ledger.operations import CalendarResets, DirectDeduction, ResetStep, Spent
from token_ledger.organisations import MAX_DEPTH
from token_ledger.reconciliation import Discrepancy
from token_ledger.repository import (
    SHORTCUT_METHODS,
    AccountFilter,
    HistoryQuery,
    StaleCutoffs,
    UsageQuery,
)
from token_ledger.thresholds import Notification
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageRow

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
SHORTCUTS_SINCE = (3, 35, 0)
"""The SQLite whose statements the shortcuts use; with an older one, every call takes the
path of an adapter without them."""

MAX_PARAMETERS = 500

# ``json.dumps`` with any option builds a new encoder per call; every ledger entry is encoded.
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


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


# ?N is the Nth of ACCOUNT_COLUMNS; created_at and reset_anchor never change.
SAVE_ACCOUNT = (
    "UPDATE user_tokens SET monthly_limit = ?2, monthly_tokens_used = ?3,"
    " last_monthly_reset = ?4, updated_at = ?6, overage_limit = ?8, grant_balance = ?9,"
    " reserved_tokens = ?10, time_zone = ?11, rollover_cap = ?12, notification_thresholds = ?13,"
    " organisation_id = ?14, spending_windows = ?15 WHERE user_id = ?1"
)
NOTIFICATIONS_AFTER = (
    f"SELECT {NOTIFICATION_COLUMNS} FROM token_notifications WHERE id > ? ORDER BY id LIMIT ?"
)
CURSOR_POSITION = "SELECT position FROM token_notification_cursors WHERE consumer = ?"
_NOW_TEXT = "strftime('%Y-%m-%d %H:%M:%f000+00:00', 'now')"


class SQLiteUnitOfWork:
    """Statements on the repository's connection; in a write it holds the write lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def load_account(self, user_id: str) -> TokenAccount | None:
        row = self._conn.execute(
            f"SELECT {ACCOUNT_COLUMNS} FROM user_tokens WHERE user_id = ?", (user_id,)
        ).fetchone()
        return None if row is None else _with_balances(self._conn, [ROWS.account(row)])[0]

    def load_path(self, user_id: str) -> list[TokenAccount]:
        """One statement, in the write lock that every writer takes first, so nothing
        moves meanwhile."""
        rows = self._conn.execute(PATH, (user_id, MAX_DEPTH)).fetchall()
        return _with_balances(self._conn, [ROWS.account(row) for row in rows])

    def members_of(self, user_id: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT user_id FROM user_tokens WHERE organisation_id = ? ORDER BY user_id",
            (user_id,),
        ).fetchall()
        return [row[0] for row in rows]

    def insert_account(self, account: TokenAccount) -> bool:
        cursor = self._conn.execute(
            f"INSERT INTO user_tokens ({ACCOUNT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO NOTHING",
            WRITE.account_row(account),
        )
        return cursor.rowcount == 1

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        if len(accounts) == 1:  # the usual write: one statement, without executemany's setup
            self._conn.execute(SAVE_ACCOUNT, WRITE.account_row(accounts[0]))
        elif accounts:
            self._conn.executemany(SAVE_ACCOUNT, [WRITE.account_row(a) for a in accounts])

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        stored = []
        for entry in entries:
            cursor = self._conn.execute(
                f"INSERT INTO token_transactions ({NEW_TRANSACTION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                WRITE.entry_row(entry),
            )
            stored.append(attrs.evolve(entry, id=cursor.lastrowid))
        return stored

    def save_grants(self, grants: Sequence[Grant]) -> None:
        self._conn.executemany(
            f"INSERT INTO token_grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining,"
            " voided_at = excluded.voided_at",
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

    def reset_after(self, user_id: str, entry_id: int) -> bool:
        row = self._conn.execute(RESET_AFTER, (user_id, entry_id)).fetchone()
        return bool(row[0])

    def entries_mirroring(self, entry_id: int) -> list[Transaction]:
        rows = self._conn.execute(
            f"SELECT {TRANSACTION_COLUMNS} FROM token_transactions WHERE member_entry_id = ?"
            " ORDER BY id",
            (entry_id,),
        ).fetchall()
        return [ROWS.transaction(row) for row in rows]

    def find_reservation(self, reservation_id: str) -> Reservation | None:
        row = self._conn.execute(
            f"SELECT {RESERVATION_COLUMNS} FROM token_reservations WHERE id = ?",
            (reservation_id,),
        ).fetchone()
        return None if row is None else ROWS.reservation(row)

    def find_grant(self, grant_id: str) -> Grant | None:
        row = self._conn.execute(
            f"SELECT {GRANT_COLUMNS} FROM token_grants WHERE id = ?", (grant_id,)
        ).fetchone()
        return None if row is None else ROWS.grant(row)

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

    def append_notifications(self, notifications: Sequence[Notification]) -> list[Notification]:
        """In the write lock: ids in commit order, and no other writer between the count of
        earlier occurrences and the insert (the unique index would refuse one anyway)."""
        stored = []
        for note in notifications:
            row = WRITE.notification_row(note)
            occurrence = self._conn.execute(
                "SELECT count(*) + 1 FROM token_notifications"
                " WHERE user_id = ? AND threshold = ? AND period_start = ?",
                row[:3],
            ).fetchone()[0]
            cursor = self._conn.execute(
                f"INSERT INTO token_notifications ({NEW_NOTIFICATION_COLUMNS}, occurrence)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, occurrence),
            )
            stored.append(attrs.evolve(note, id=cursor.lastrowid, occurrence=occurrence))
        return stored

    def last_notification_id(self) -> int:
        row = self._conn.execute("SELECT max(id) FROM token_notifications").fetchone()
        return int(row[0] or 0)

    def advance_notification_cursor(self, consumer: str, up_to: int) -> int:
        self._conn.execute(
            "INSERT INTO token_notification_cursors (consumer, position, updated_at)"
            f" VALUES (?, ?, {_NOW_TEXT}) ON CONFLICT (consumer) DO UPDATE"
            " SET position = max(position, excluded.position), updated_at = excluded.updated_at",
            (consumer, up_to),
        )
        return int(self._conn.execute(CURSOR_POSITION, (consumer,)).fetchone()[0])

    def notifications(self, after: int, limit: int) -> list[Notification]:
        rows = self._conn.execute(NOTIFICATIONS_AFTER, (after, limit)).fetchall()
        return [ROWS.notification(row) for row in rows]

    def notification_cursor(self, consumer: str) -> int:
        row = self._conn.execute(CURSOR_POSITION, (consumer,)).fetchone()
        return 0 if row is None else int(row[0])


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
        self._last_period_start = (datetime.min.replace(tzinfo=timezone.utc), "")
        self._direct: tuple[object, tuple[str, str]] = ((), DIRECT_DEDUCTION)
        self._full_path_users = KnownFullPath()
        if sqlite3.sqlite_version_info < SHORTCUTS_SINCE:
            # UPDATE ... RETURNING and MATERIALIZED: the shortcuts' statements need them.
            for name in SHORTCUT_METHODS:
                setattr(self, name, None)
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
        refuse_newer_schema(self.db)
        if migrations.pending(self.db):
            with self._write():
                refuse_newer_schema(self.db)
                migrations.apply(self.db)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The write transaction: the lock, ``BEGIN IMMEDIATE``, ``COMMIT`` or ``ROLLBACK``,
        and the translation of driver errors, in one context."""
        conn = self.db.conn
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (disk full, I/O error, a deferred foreign key) may leave
                    # the transaction open; left so, every later BEGIN would fail.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise StorageError(f"SQLite failed: {error}") from error

    @contextmanager
    def unit_of_work(self) -> Iterator[SQLiteUnitOfWork]:
        with self._write() as conn:
            yield SQLiteUnitOfWork(conn)

    def deduct_directly(self, deduction: DirectDeduction) -> Spent | None:
        """The common deduction in one ``BEGIN IMMEDIATE`` transaction: a guarded
        ``UPDATE ... RETURNING`` and the entry, and for a member of an organisation the
        same of the organisation's share, after the member's entry; ``None``, with
        everything rolled back, when a guard matches nothing.

        Written out rather than through :meth:`_write`: this is the hot path, and the
        context managers cost a tenth of what the two statements do.
        """
        user_id = deduction.user_id
        if user_id in self._full_path_users:
            return None
        amount = deduction.amount
        now = format_instant(deduction.now)
        start = self._period_start_text(deduction.period_start)
        thresholds, (statement, share) = self._direct
        if deduction.thresholds is not thresholds:  # the ledger's: nearly always the same tuple
            statement, share = direct_deduction(deduction.thresholds)
            self._direct = (deduction.thresholds, (statement, share))
        effects = f'{{"usage":{amount}}}'
        conn = self.db.conn
        with self._lock:
            try:
                cursor = conn.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    row = cursor.execute(statement, (amount, now, user_id, start)).fetchone()
                    if row is None:
                        self._decline(cursor, user_id, user_id)
                        return None
                    organisation_id = row[2]
                    shared = None
                    if organisation_id is not None:
                        shared = cursor.execute(
                            share, (amount, now, organisation_id, start)
                        ).fetchone()
                        if shared is None:
                            self._decline(cursor, user_id, organisation_id)
                            return None
                    entry = (
                        user_id,
                        amount,
                        now,
                        row[0],
                        deduction.feature,
                        COMPACT_JSON.encode(deduction.context),
                        deduction.idempotency_key,
                        effects,
                        None,
                    )
                    try:
                        entry_id = cursor.execute(DIRECT_ENTRY, entry).lastrowid
                    except sqlite3.IntegrityError:
                        # The key is stored already (the only constraint an entry of this
                        # kind can fail): nothing of this transaction stays, and the full
                        # path replays the stored entry or reports the conflict.
                        cursor.execute("ROLLBACK")
                        return None
                    if shared is not None:
                        context = COMPACT_JSON.encode(deduction.share_context)
                        share_entry = (organisation_id, amount, now, shared[0], deduction.feature)
                        cursor.execute(
                            DIRECT_ENTRY, (*share_entry, context, None, effects, entry_id)
                        )
                    cursor.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise StorageError(f"SQLite failed: {error}") from error
        assert entry_id is not None
        organisation = None if shared is None else (shared[0], shared[1])
        return deduction.spent(entry_id, row[0], row[1], organisation)

    def _decline(self, cursor: sqlite3.Cursor, user_id: str, refused: str) -> None:
        """Roll back a deduction whose guard refused ``refused`` (the user's account or its
        organisation), and remember the user when that account is one it never covers."""
        never = cursor.execute(NEVER_DIRECT, (refused, refused != user_id)).fetchone()
        cursor.execute("ROLLBACK")
        if never is not None and never[0]:
            self._full_path_users.add(user_id)

    def _period_start_text(self, start: datetime) -> str:
        """``format_instant(start)``, remembered: nearly every deduction of a month asks it."""
        last, text = self._last_period_start
        if start != last:
            text = format_instant(start)
            self._last_period_start = (start, text)
        return text

    def reset_calendar_run(self, run: CalendarResets) -> ResetStep:
        """The bulk reset's next run of accounts that need no decision of the domain,
        in one ``BEGIN IMMEDIATE`` transaction: see :class:`CalendarResets`."""
        where, parameters = _where(
            account_conditions(AccountFilter(stale=run.cutoffs), run.after_user_id)
        )
        with self._write() as conn:
            candidates = conn.execute(
                f"SELECT user_id, {RESET_IN_SQL} FROM user_tokens {where} ORDER BY user_id LIMIT ?",
                (*parameters, run.limit),
            ).fetchall()
            if not candidates:
                return ResetStep(run.after_user_id, 0, last=True)
            done = next((n for n, (_, simple) in enumerate(candidates) if not simple), None)
            resets = len(candidates) if done is None else done
            if resets:
                last = candidates[resets - 1][0]
                now = format_instant(run.now)
                stamps = (now, run.period_start_text, format_instant(run.period_start))
                conn.execute(
                    RUN_ENTRIES.format(where=numbered(where, 5)),
                    (*stamps, format_instant(run.earlier), *parameters, last),
                )
                conn.execute(
                    RUN_ACCOUNTS.format(where=numbered(where, 5)),
                    (*stamps, format_instant(run.earlier), *parameters, last),
                )
        after = candidates[resets - 1][0] if resets else run.after_user_id
        if done is None:
            return ResetStep(after, resets, last=len(candidates) < run.limit)
        later = candidates[done:]
        for_the_domain = next((n for n, (_, simple) in enumerate(later) if simple), len(later))
        final = len(candidates) < run.limit and for_the_domain == len(later)
        return ResetStep(after, resets, False, for_the_domain, final)

    def count_accounts_where(self, filters: Sequence[AccountFilter]) -> list[int]:
        """How many accounts match each filter, exactly, counted in one pass."""
        columns = []
        parameters: list[Any] = []
        for where in filters:
            texts, values = WRITE.conditions(account_conditions(where, None))
            columns.append(
                f"count(*) FILTER (WHERE {' AND '.join(texts)})" if texts else "count(*)"
            )
            parameters += values
        with self._lock, _translated_errors():
            row = self.db.conn.execute(
                f"SELECT {', '.join(columns)} FROM user_tokens", parameters
            ).fetchone()
        return [int(count) for count in row]

    def find_discrepancies(self, user_id: str | None) -> list[Discrepancy] | None:
        """Every discrepancy of :meth:`TokenLedger.reconcile`, found by one grouped query.

        ``None`` when SQLite cannot add the figures up (a sum past 2^63 - 1): the
        library's own fold, which has no such limit, answers then.
        """
        query, parameters = discrepancies(user_id)
        with self._lock:
            try:
                rows = self.db.conn.execute(query, parameters).fetchall()
            except sqlite3.OperationalError:
                return None
        return [Discrepancy(row[0], row[3], row[4], row[5]) for row in rows]

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

    def notifications(self, after: int, limit: int) -> list[Notification]:
        with self._lock, _translated_errors():
            return SQLiteUnitOfWork(self.db.conn).notifications(after, limit)

    def notification_cursor(self, consumer: str) -> int:
        with self._lock, _translated_errors():
            return SQLiteUnitOfWork(self.db.conn).notification_cursor(consumer)

    def count_accounts(self) -> int:
        with self._lock, _translated_errors():
            return int(self.db.conn.execute("SELECT count(*) FROM user_tokens").fetchone()[0])

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        """One grouped query (see :mod:`token_ledger._usage_sql`)."""
        with self._lock, _translated_errors():
            return sqlite_usage(self.db.conn, query, WRITE)

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        with self._lock, _translated_errors():
            return _select_accounts(self.db.conn, where, after_user_id, limit)

    def close(self) -> None:
        with self._lock:
            self.db.close()
