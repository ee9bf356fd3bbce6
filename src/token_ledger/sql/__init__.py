"""The optional SQL: the seed system's view, triggers and functions, in the database itself.

For teams that also write to ``user_tokens`` from outside Python (an edge
function, a SQL console, another service): installed, the database applies
the reset rules to every writer. The library works the same with or without
it. The scripts are package data (``postgres.sql``, ``sqlite.sql``), also
printed by ``token-ledger sql postgres|sqlite``.

PostgreSQL gets the seed's view ``user_tokens_with_auto_reset``, the trigger
function ``check_and_reset_monthly_tokens()`` behind the triggers
``auto_monthly_reset_trigger_insert`` and ``auto_monthly_reset_trigger_update``,
the functions ``auto_reset_monthly_tokens()`` and
``reset_user_tokens_if_needed(user_id)``, and ``deduct_tokens(...)``, for every
account: its own zone, anchor and rollover. SQLite gets the view and the two
triggers, for calendar months in UTC without rollover; it leaves the other
accounts to the library. On both, members and organisations reset each on their
own and spending windows are left as stored (the library rolls them lazily);
``deduct_tokens`` spends from an organisation's own budget and refuses (0A000) a
member or an account with windows, which only the library deducts from.

``import token_ledger`` imports this module, but not psycopg, sqlite3 or
``importlib.resources``: the functions import what they use when called.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from token_ledger import _validation
from token_ledger.errors import InvalidInput, StorageError
from token_ledger.policy import load_zone
from token_ledger.thresholds import Threshold, check_thresholds, encode

if TYPE_CHECKING:
    import sqlite3

    import psycopg
    import sqlite_utils

# The bytes of "token_lg" as a bigint: a constant, so every process on every host takes the
# same lock (a Python ``hash()`` of a string differs between processes). The migrations of
# ``token_ledger.postgres`` and the PostgreSQL script take it.
MIGRATION_LOCK_KEY = 0x746F6B656E5F6C67
# The bytes of ``token_nt``: every transaction that records a threshold notification takes
# ``pg_advisory_xact_lock`` of it first, so notifications commit in the order of their ids.
NOTIFICATION_LOCK_KEY = 0x746F6B656E5F6E74
_PLACEHOLDER = re.compile(
    r"\$\$|@(schema|timezone|timezone_name|migration_lock_key|notification_lock_key|thresholds)@"
)
# Columns the SQLite SQL reads that only the ledger's later migrations add.
SQLITE_REQUIRED = {
    "user_tokens": {
        "reset_anchor",
        "overage_limit",
        "grant_balance",
        "reserved_tokens",
        "time_zone",
        "rollover_cap",
        "notification_thresholds",
        "organisation_id",
        "spending_windows",
    },
    "token_transactions": {"effects", "reference"},
    "token_grants": {"remaining", "expires_at"},
    "token_reservations": {"status", "expires_at"},
}


def _script(name: str) -> str:
    from importlib import resources  # not at import: it takes longer than the rest of the package

    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def postgres_script(
    schema: str = "public", timezone: str = "UTC", thresholds: Iterable[Threshold] = ()
) -> str:
    """The PostgreSQL SQL for the ledger's tables in ``schema``, months in ``timezone``.

    ``timezone`` must be the zone of the ledger's
    :class:`~token_ledger.MonthlyResetPolicy`: the triggers judge the
    library's rows by it. ``thresholds`` must be the ledger's default notification
    thresholds: ``deduct_tokens`` records the crossings of those (or of an account's own).
    Identifiers are quoted in the text, so it runs as it is in ``psql``
    (``--single-transaction``) or any other client.
    """
    name = _validation.schema_name(schema)
    load_zone(timezone)  # IANA names: letters, digits and "/_-+", nothing to escape
    defaults = encode(check_thresholds(thresholds)) or ""  # digits, '%', ',' and letters
    # Function bodies are dollar-quoted: the tag must not occur in the schema's name.
    tag, n = "$$", 0
    while tag in name:
        n += 1
        tag = f"$tl{n}$"
    values = {
        "schema": '"' + name.replace('"', '""') + '"',
        "timezone": f"'{timezone}'",
        "timezone_name": timezone,
        "migration_lock_key": str(MIGRATION_LOCK_KEY),
        "notification_lock_key": str(NOTIFICATION_LOCK_KEY),
        "thresholds": f"'{defaults}'",
    }
    return _PLACEHOLDER.sub(lambda m: values[m[1]] if m[1] else tag, _script("postgres.sql"))


def sqlite_script() -> str:
    """The SQLite SQL: plain SQL in one transaction, runnable by any SQLite client."""
    return _script("sqlite.sql")


def install_postgres_sql(
    conn: psycopg.Connection[Any],
    *,
    schema: str = "public",
    timezone: str = "UTC",
    thresholds: Iterable[Threshold] = (),
) -> None:
    """Install (or re-install) the PostgreSQL SQL through ``conn``, in one transaction.

    The ledger's tables must exist in ``schema`` (open a ledger on it once).
    In a transaction of yours, the install is a savepoint of it and lasts
    only if you commit.
    """
    import psycopg

    script = postgres_script(schema, timezone, thresholds)
    try:
        with conn.transaction():
            conn.execute(script)  # no parameters: one round trip for all statements
    except psycopg.Error as error:
        raise StorageError(f"installing the SQL failed: {error}") from error


def install_sqlite_sql(db: sqlite3.Connection | sqlite_utils.Database) -> None:
    """Install (or re-install) the SQLite SQL in the ledger's database, in one transaction.

    The ledger's tables must exist (open a ledger on the file once). The
    connection must not be inside a transaction of its own.
    """
    import sqlite3

    conn = db if isinstance(db, sqlite3.Connection) else db.conn
    if conn.in_transaction:
        raise InvalidInput("install_sqlite_sql needs a connection outside any transaction")
    try:
        missing = [
            f"{table}.{column}"
            for table, columns in SQLITE_REQUIRED.items()
            for column in sorted(
                columns - {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            )
        ]
        if missing:
            raise StorageError(
                "token-ledger's tables are missing, or older than this SQL (no "
                f"{', '.join(missing)}): open the database with TokenLedger.sqlite() first"
            )
        conn.executescript(sqlite_script())
    except sqlite3.Error as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StorageError(f"installing the SQL failed: {error}") from error
