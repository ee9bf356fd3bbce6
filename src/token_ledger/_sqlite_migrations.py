"""The SQLite schema's numbered migrations, registered with sqlite-utils' ``Migrations``.

sqlite-utils applies each in a transaction of its own and records its name; the names
this token-ledger knows (:data:`KNOWN_MIGRATIONS`) tell a database written by a newer one.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils
from sqlite_utils.migrations import Migrations

from token_ledger.errors import SchemaVersionError

MIGRATION_SET = "token_ledger"

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


@_migration("0003_priorities_voids_rollover_zones")
def _add_entitlements(db: sqlite_utils.Database) -> None:
    for statement in (
        "ALTER TABLE user_tokens ADD COLUMN time_zone TEXT",
        "ALTER TABLE user_tokens ADD COLUMN rollover_cap INTEGER NOT NULL DEFAULT 0"
        " CHECK (rollover_cap >= 0)",
        "ALTER TABLE token_grants ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE token_grants ADD COLUMN voided_at TEXT",
    ):
        db.execute(statement)


@_migration("0004_threshold_notifications")
def _add_notifications(db: sqlite_utils.Database) -> None:
    for statement in (
        # NULL: the ledger's default thresholds; '' none; '80%,100%,nothing_left' its own
        "ALTER TABLE user_tokens ADD COLUMN notification_thresholds TEXT",
        # AUTOINCREMENT: an id is never handed out twice, even after the newest row is deleted
        """CREATE TABLE token_notifications (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            threshold TEXT NOT NULL,
            period_start TEXT NOT NULL,
            occurrence INTEGER NOT NULL CHECK (occurrence > 0),
            created_at TEXT NOT NULL,
            transaction_id INTEGER,
            monthly_used INTEGER NOT NULL,
            monthly_limit INTEGER NOT NULL,
            total_remaining INTEGER NOT NULL,
            UNIQUE (user_id, threshold, period_start, occurrence)
        )""",
        """CREATE TABLE token_notification_cursors (
            consumer TEXT PRIMARY KEY NOT NULL,
            position INTEGER NOT NULL CHECK (position >= 0),
            updated_at TEXT NOT NULL
        )""",
    ):
        db.execute(statement)


@_migration("0005_organisations_and_spending_windows")
def _add_organisations(db: sqlite_utils.Database) -> None:
    for statement in (
        # the account whose budget this one spends from too; the library opens members
        # only under an organisation that exists, and never deletes an account
        "ALTER TABLE user_tokens ADD COLUMN organisation_id TEXT REFERENCES user_tokens (user_id)",
        # NULL: no window caps; else JSON, see token_ledger.windows.encode
        "ALTER TABLE user_tokens ADD COLUMN spending_windows TEXT",
        "CREATE INDEX idx_user_tokens_organisation ON user_tokens (organisation_id)"
        " WHERE organisation_id IS NOT NULL",
        # on an organisation's entry: the member's entry it records the share of
        "ALTER TABLE token_transactions ADD COLUMN member_entry_id INTEGER",
        "CREATE INDEX idx_token_transactions_member_entry ON token_transactions"
        " (member_entry_id) WHERE member_entry_id IS NOT NULL",
    ):
        db.execute(statement)


@_migration("0006_reset_entries_index")
def _index_resets(db: sqlite_utils.Database) -> None:
    # Whether a reset came after an entry (a refund's question) without reading the
    # account's other entries since.
    db.execute(
        "CREATE INDEX idx_token_transactions_reset ON token_transactions (user_id, id)"
        " WHERE operation_type = 'reset'"
    )


def refuse_newer_schema(db: sqlite_utils.Database) -> None:
    """Refuse a database that a newer token-ledger migrated: its tables are not ours to use."""
    unknown = {m.name for m in migrations.applied(db)} - KNOWN_MIGRATIONS
    if unknown:
        raise SchemaVersionError(
            "this database was written by a newer token-ledger (migrations "
            f"{sorted(unknown)} are unknown here); upgrade token-ledger to open it"
        )
