"""SQLite: every kind of caller transaction, and the write lock taken on entry or refused."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils
from sqlite_utils.migrations import Migrations

from token_ledger import InvalidInput, SchemaVersionError, TokenLedger, TransientStorageError
from token_ledger.sqlite import migrations
from token_ledger.testing import MovableClock
from token_ledger.within import (
    SchemaNotMigrated,
    TransactionRequired,
    WriteLockUnavailable,
    is_transient,
    retrying,
    within,
)
from within_transaction.engines import SQLiteEngine


def holds_write_lock(path: Path) -> bool:
    """Whether some connection holds the database's write lock now (asked without waiting)."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return True
    finally:
        other.close()
    return False


def test_default_transaction_control_outside_a_transaction_opens_one_left_to_commit(
    sqlite_engine: SQLiteEngine,
) -> None:
    """sqlite3 would open a transaction at the next write: within opens it now, as the writer."""
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect()  # isolation_level="" (DEFERRED), sqlite3's default
    assert not conn.in_transaction

    with within(sqlite_engine.ledger, conn) as tokens:
        assert holds_write_lock(sqlite_engine.path)
        tokens.deduct("u1", 3)
    assert conn.in_transaction  # yours to commit or roll back
    conn.rollback()
    assert sqlite_engine.ledger.status("u1").monthly_used == 0

    with within(sqlite_engine.ledger, conn) as tokens:
        tokens.deduct("u1", 4)
    sqlite_engine.insert_order(conn, "order-1", "u1")
    conn.commit()
    assert sqlite_engine.ledger.status("u1").monthly_used == 4
    assert sqlite_engine.orders() == {"order-1"}


def test_default_transaction_control_joins_the_transaction_an_insert_opened(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect()

    sqlite_engine.insert_order(conn, "order-1", "u1")  # sqlite3 opened a transaction here
    with within(sqlite_engine.ledger, conn) as tokens:
        tokens.deduct("u1", 3)
    conn.rollback()

    assert sqlite_engine.orders() == set()
    assert sqlite_engine.ledger.status("u1").monthly_used == 0


def test_autocommit_outside_begin_is_refused_and_inside_begin_joined(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect(isolation_level=None)

    with pytest.raises(TransactionRequired, match="BEGIN IMMEDIATE"):
        within(sqlite_engine.ledger, conn).__enter__()
    assert not conn.in_transaction
    assert not holds_write_lock(sqlite_engine.path)

    conn.execute("BEGIN")  # deferred, nothing read yet: the lock is taken on entry
    with within(sqlite_engine.ledger, conn) as tokens:
        assert holds_write_lock(sqlite_engine.path)
        tokens.deduct("u1", 3)
    conn.execute("COMMIT")
    assert sqlite_engine.ledger.status("u1").monthly_used == 3


def test_the_write_lock_is_held_from_entry_until_the_caller_commits(
    sqlite_engine: SQLiteEngine,
) -> None:
    """Other writers wait for the whole of the caller's transaction, not just for the call."""
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect(isolation_level=None)
    conn.execute("BEGIN")

    with within(sqlite_engine.ledger, conn) as tokens:
        tokens.deduct("u1", 3)
    assert holds_write_lock(sqlite_engine.path)
    conn.execute("COMMIT")
    assert not holds_write_lock(sqlite_engine.path)


def test_a_deferred_transaction_that_has_not_read_waits_for_another_writer(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    other = sqlite_engine.connect(isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    conn = sqlite_engine.connect(isolation_level=None)
    conn.execute("BEGIN")

    with within(sqlite_engine.ledger, conn) as tokens:  # waits (busy timeout 10 s)
        tokens.deduct("u1", 3)
    conn.execute("COMMIT")

    assert sqlite_engine.ledger.status("u1").monthly_used == 3


def test_a_writer_that_outlasts_the_busy_timeout_is_reported_as_such(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    other = sqlite_engine.connect(isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    conn = sqlite_engine.connect(isolation_level=None, timeout=0.2)
    conn.execute("BEGIN")

    with pytest.raises(WriteLockUnavailable, match="longer than the busy timeout"):
        within(sqlite_engine.ledger, conn).__enter__()
    other.execute("ROLLBACK")


def test_a_transaction_that_read_before_a_commit_elsewhere_is_refused_at_entry(
    sqlite_engine: SQLiteEngine,
) -> None:
    """Its snapshot cannot become the writer: WriteLockUnavailable now, not SQLITE_BUSY later."""
    ledger = sqlite_engine.ledger
    ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect(isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM orders").fetchone()  # the snapshot starts here
    ledger.deduct("u1", 2)  # another connection commits

    started = time.monotonic()
    with pytest.raises(WriteLockUnavailable, match="BEGIN IMMEDIATE") as refused:
        within(ledger, conn).__enter__()

    assert time.monotonic() - started < 5  # at once, not after the 10 s busy timeout
    assert isinstance(refused.value, TransientStorageError)
    assert is_transient(refused.value)
    assert conn.in_transaction  # still the caller's, to roll back
    conn.execute("ROLLBACK")
    assert ledger.status("u1").monthly_used == 2


def test_a_transaction_that_read_while_another_writes_is_refused_without_waiting(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    other = sqlite_engine.connect(isolation_level=None)
    conn = sqlite_engine.connect(isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM orders").fetchone()
    other.execute("BEGIN IMMEDIATE")

    started = time.monotonic()
    with pytest.raises(WriteLockUnavailable):
        within(sqlite_engine.ledger, conn).__enter__()
    assert time.monotonic() - started < 5

    other.execute("ROLLBACK")
    with within(sqlite_engine.ledger, conn) as tokens:  # nothing was committed meanwhile
        tokens.deduct("u1", 1)
    conn.execute("COMMIT")
    assert sqlite_engine.ledger.status("u1").monthly_used == 1


def test_retrying_runs_a_refused_read_first_transaction_again_from_the_start(
    sqlite_engine: SQLiteEngine,
) -> None:
    ledger = sqlite_engine.ledger
    ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect(isolation_level=None)
    attempts = []

    def place_order() -> int:
        attempts.append(len(attempts) + 1)
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT count(*) FROM orders").fetchone()
            if len(attempts) == 1:
                ledger.deduct("u1", 1)  # someone else commits meanwhile, the first time only
            with within(ledger, conn) as tokens:
                remaining = tokens.deduct("u1", 2, idempotency_key="order-1").monthly_remaining
            sqlite_engine.insert_order(conn, "order-1", "u1")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return remaining

    assert retrying(place_order) == 7
    assert attempts == [1, 2]
    assert sqlite_engine.orders() == {"order-1"}


def test_the_applications_row_and_text_factories_do_not_reach_the_ledger(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    conn = sqlite_engine.connect()
    conn.row_factory = sqlite3.Row
    conn.text_factory = bytes

    with within(sqlite_engine.ledger, conn) as tokens:
        spent = tokens.deduct("u1", 3, feature="chat", context={"k": "v"})
        assert tokens.history("u1")[0].operation_context == {"k": "v"}
    conn.commit()

    assert spent.transaction.feature == "chat"
    assert conn.row_factory is sqlite3.Row
    assert conn.text_factory is bytes


def test_a_sqlite_utils_database_is_accepted_and_a_schema_refused(
    sqlite_engine: SQLiteEngine,
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=10)
    db = sqlite_utils.Database(sqlite_engine.connect())

    with db.atomic(), within(sqlite_engine.ledger, db) as tokens:
        tokens.deduct("u1", 3)
    with pytest.raises(InvalidInput, match="schema is for PostgreSQL"):
        within(sqlite_engine.ledger, db, schema="public").__enter__()

    assert sqlite_engine.ledger.status("u1").monthly_used == 3


def test_a_file_without_the_ledgers_tables_is_refused_and_left_as_it_was(
    tmp_path: Path, clock: MovableClock
) -> None:
    conn = sqlite3.connect(tmp_path / "empty.db")
    conn.execute("CREATE TABLE orders (id TEXT)")
    conn.commit()

    with pytest.raises(SchemaNotMigrated, match="has no token-ledger tables"):
        within(TokenLedger.memory(clock=clock), conn).__enter__()
    assert not conn.in_transaction  # the transaction opened for it was rolled back

    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO orders VALUES ('kept')")
    with pytest.raises(SchemaNotMigrated):
        within(TokenLedger.memory(clock=clock), conn).__enter__()
    conn.commit()  # the caller's own transaction was left alone
    assert conn.execute("SELECT id FROM orders").fetchall() == [("kept",)]


def test_an_older_or_newer_file_is_refused(tmp_path: Path, clock: MovableClock) -> None:
    older = sqlite_utils.Database(tmp_path / "older.db")
    migrations.apply(older, stop_before="0002_grants_reservations_overage_effects")
    newer_path = tmp_path / "newer.db"
    TokenLedger.sqlite(newer_path).close()
    newer = sqlite_utils.Database(newer_path)
    future = Migrations(migrations.name)

    @future(name="9999_from_the_future")
    def _future(db: sqlite_utils.Database) -> None:
        pass

    future.apply(newer)
    rules = TokenLedger.memory(clock=clock)

    with pytest.raises(SchemaNotMigrated, match="lacks the migrations"):
        within(rules, older.conn).__enter__()
    with pytest.raises(SchemaVersionError, match="newer token-ledger") as refused:
        within(rules, newer.conn).__enter__()
    assert not isinstance(refused.value, SchemaNotMigrated)
