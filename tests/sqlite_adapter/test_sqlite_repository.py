"""What is particular to SQLite: files, connections, pragmas, schema and migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from token_ledger import InvalidInput, SchemaVersionError, StorageError, TokenLedger
from token_ledger.sqlite import MIGRATION_SET, SQLiteRepository, migrations


def test_a_file_is_created_in_wal_mode_with_the_seed_tables(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"

    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("u1", monthly_limit=5)

    db = sqlite_utils.Database(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"user_tokens", "token_transactions"} <= set(db.table_names())
    assert [c.name for c in db.table("user_tokens").columns] == [
        "user_id",
        "monthly_limit",
        "monthly_tokens_used",
        "last_monthly_reset",
        "reset_anchor",
        "created_at",
        "updated_at",
        "overage_limit",
        "grant_balance",
        "reserved_tokens",
        "time_zone",
        "rollover_cap",
        "notification_thresholds",
        "organisation_id",
        "spending_windows",
    ]
    assert {c.name for c in db.table("token_transactions").columns} == {
        "id",
        "user_id",
        "operation_type",
        "amount",
        "feature",
        "operation_context",
        "success",
        "created_at",
        "idempotency_key",
        "balance_after",
        "effects",
        "reference",
        "member_entry_id",
    }
    assert {"token_grants", "token_reservations"} <= set(db.table_names())


def test_reopening_keeps_data_and_records_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("u1", monthly_limit=5)
        ledger.deduct("u1", 2)

    with TokenLedger.sqlite(path) as ledger:
        assert ledger.status("u1").monthly_used == 2

    db = sqlite_utils.Database(path)
    applied = [m.name for m in migrations.applied(db)]
    assert len(applied) == len(set(applied)) >= 1


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    SQLiteRepository(path).close()
    db = sqlite_utils.Database(path)
    db.table("_sqlite_migrations").insert(
        {"migration_set": MIGRATION_SET, "name": "9999_from_the_future", "applied_at": "x"}
    )
    db.close()

    with pytest.raises(SchemaVersionError, match="newer token-ledger"):
        SQLiteRepository(path)


def test_memory_databases_work_without_wal() -> None:
    with TokenLedger.sqlite(":memory:") as ledger:
        ledger.open_account("u1", monthly_limit=5)
        assert ledger.deduct("u1", 5).monthly_remaining == 0


def test_an_existing_sqlite_utils_database_or_connection_can_be_passed(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    db = sqlite_utils.Database(path)
    db.table("app_users").insert({"id": 1, "name": "alice"})

    with TokenLedger.sqlite(db) as ledger:
        ledger.open_account("alice", monthly_limit=5)
    conn = sqlite3.connect(path, isolation_level=None)
    with TokenLedger.sqlite(conn) as ledger:
        assert ledger.status("alice").monthly_limit == 5
    assert sqlite_utils.Database(path).table("app_users").count == 1


def test_durability_is_an_option(tmp_path: Path) -> None:
    repository = SQLiteRepository(tmp_path / "tokens.db", synchronous="FULL")
    assert repository.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    repository.close()

    with pytest.raises(InvalidInput):
        SQLiteRepository(tmp_path / "other.db", synchronous="SOMETIMES")


def test_driver_errors_become_storage_errors(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()

    with pytest.raises(StorageError) as raised:
        SQLiteRepository(directory)
    assert isinstance(raised.value.__cause__, sqlite3.Error)


def test_a_writer_holding_the_lock_makes_others_wait_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("u1", monthly_limit=5)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    impatient = TokenLedger.sqlite(path, busy_timeout=0.05)
    with pytest.raises(StorageError, match="locked"):
        impatient.deduct("u1", 1)
    blocker.execute("ROLLBACK")
    assert impatient.deduct("u1", 1).monthly_remaining == 4
    impatient.close()
    blocker.close()


def test_a_version_one_database_is_migrated_and_its_log_still_reconciles(tmp_path: Path) -> None:
    """Entries written before effects existed are given theirs by the migration."""
    path = tmp_path / "v1.db"
    db = sqlite_utils.Database(path)
    migrations.apply(db, stop_before="0002_grants_reservations_overage_effects")
    db.execute(
        "INSERT INTO user_tokens (user_id, monthly_limit, monthly_tokens_used, last_monthly_reset)"
        " VALUES ('old', 50, 7, '2026-01-01 00:00:00.000000+00:00')"
    )
    for operation, amount, success in [("deduct", 9, 1), ("reset", 9, 1), ("deduct", 7, 1)]:
        db.execute(
            "INSERT INTO token_transactions"
            " (user_id, operation_type, amount, success, balance_after)"
            " VALUES ('old', ?, ?, ?, 0)",
            [operation, amount, success],
        )
    db.execute(
        "INSERT INTO token_transactions (user_id, operation_type, amount, success, balance_after)"
        " VALUES ('old', 'deduct', 100, 0, 43)"
    )
    db.conn.commit()
    db.close()

    with TokenLedger.sqlite(path) as ledger:
        assert ledger.reconcile() == []
        assert ledger.get_account("old").monthly_tokens_used == 7
