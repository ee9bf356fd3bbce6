"""Versioned migrations: in a transaction, once, however many processes start at once."""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg import sql

from postgres import workers
from postgres.conftest import WORKERS
from postgres.support import on_every_worker
from postgres_server import Database
from token_ledger import (
    SchemaVersionError,
    StorageError,
    TokenLedger,
    _postgres_migrations,
    install_postgres_sql,
)
from token_ledger.postgres import MIGRATIONS, PostgresRepository
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres


def stored_versions(database: Database, schema: str) -> list[int]:
    with database.connect() as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(schema, "token_ledger_migrations")
            )
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.slow
def test_sixteen_processes_starting_at_once_migrate_the_schema_once(
    postgres_database: Database, postgres_schema: str, worker_processes: ProcessPoolExecutor
) -> None:
    calls = [(postgres_database.url, postgres_schema)] * WORKERS

    on_every_worker(worker_processes, workers.open_repository, calls)

    assert stored_versions(postgres_database, postgres_schema) == [m.version for m in MIGRATIONS]


def test_threads_starting_at_once_migrate_the_schema_once(
    postgres_database: Database, postgres_schema: str
) -> None:
    start_line = threading.Barrier(8)

    def open_repository(_: int) -> None:
        start_line.wait(60)
        PostgresRepository(postgres_database.url, schema=postgres_schema).close()

    with ThreadPoolExecutor(8) as threads:
        list(threads.map(open_repository, range(8)))

    assert stored_versions(postgres_database, postgres_schema) == [m.version for m in MIGRATIONS]


def test_reopening_a_schema_keeps_its_data_and_migrates_nothing(
    postgres_database: Database, postgres_schema: str
) -> None:
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 4)

    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as reopened:
        assert reopened.status("u1").monthly_used == 4

    assert stored_versions(postgres_database, postgres_schema) == [m.version for m in MIGRATIONS]


def test_a_schema_from_a_newer_token_ledger_is_refused(
    postgres_database: Database, postgres_schema: str
) -> None:
    PostgresRepository(postgres_database.url, schema=postgres_schema).close()
    newer = MIGRATIONS[-1].version + 1
    with postgres_database.connect() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(
                sql.Identifier(postgres_schema, "token_ledger_migrations")
            ),
            (newer,),
        )

    with pytest.raises(SchemaVersionError, match=f"version {newer}"):
        TokenLedger.postgres(postgres_database.url, schema=postgres_schema)
    with psycopg.connect(postgres_database.url) as conn, pytest.raises(SchemaVersionError):
        PostgresRepository(conn, schema=postgres_schema)


def test_a_version_one_schema_is_migrated_and_its_log_still_reconciles(
    postgres_database: Database, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries written before effects existed are given theirs by the migration."""
    with monkeypatch.context() as version_one:
        version_one.setattr(_postgres_migrations, "MIGRATIONS", MIGRATIONS[:1])
        PostgresRepository(postgres_database.url, schema=postgres_schema).close()
    with postgres_database.connect() as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, monthly_limit, monthly_tokens_used, last_monthly_reset)"
                " VALUES ('old', 50, 7, '2026-01-01 00:00:00+00')"
            ).format(sql.Identifier(postgres_schema, "user_tokens"))
        )
        for operation, amount, success in [
            ("deduct", 9, True),
            ("reset", 9, True),
            ("deduct", 7, True),
            ("deduct", 100, False),
        ]:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (user_id, operation_type, amount, success, balance_after)"
                    " VALUES ('old', %s, %s, %s, 0)"
                ).format(sql.Identifier(postgres_schema, "token_transactions")),
                (operation, amount, success),
            )
    assert stored_versions(postgres_database, postgres_schema) == [1]

    clock = MovableClock(datetime(2026, 1, 15, tzinfo=timezone.utc))
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema, clock=clock) as ledger:
        assert ledger.reconcile() == []
        assert ledger.get_account("old").monthly_tokens_used == 7
        assert [entry.effects.usage for entry in ledger.history("old")] == [0, 7, -9, 9]

        ledger.grant("old", 5)
        assert ledger.deduct("old", 45).transaction.effects.usage == 43
        assert ledger.reconcile() == []
    assert stored_versions(postgres_database, postgres_schema) == [m.version for m in MIGRATIONS]


def test_a_migration_that_fails_leaves_nothing_behind(
    postgres_database: Database, postgres_schema: str
) -> None:
    """A table in the way makes the first migration fail halfway; all of it is undone."""
    with postgres_database.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(postgres_schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (x int)").format(
                sql.Identifier(postgres_schema, "token_transactions")
            )
        )

    with pytest.raises(StorageError) as raised:
        PostgresRepository(postgres_database.url, schema=postgres_schema)

    assert isinstance(raised.value.__cause__, psycopg.errors.DuplicateTable)
    with postgres_database.connect() as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (postgres_schema,)
        ).fetchall()
    assert tables == [("token_transactions",)]


@pytest.mark.parametrize("with_sql", [False, True], ids=["tables", "tables-and-sql"])
def test_a_migrated_schema_needs_only_the_privileges_the_readme_lists(
    postgres_database: Database, postgres_schema: str, with_sql: bool
) -> None:
    """The application's role creates nothing once a DBA has migrated the schema.

    With the optional SQL installed too, its triggers run on the role's writes
    and the role may call its functions: they run with the caller's rights.
    """
    PostgresRepository(postgres_database.url, schema=postgres_schema).close()
    if with_sql:
        with postgres_database.connect() as conn:
            install_postgres_sql(conn, schema=postgres_schema)
    role = f"{postgres_schema}_app"
    schema = sql.Identifier(postgres_schema)
    tables = [
        sql.Identifier(postgres_schema, name)
        for name in ("user_tokens", "token_transactions", "token_grants", "token_reservations")
    ]
    grants = [
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app'").format(sql.Identifier(role)),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, sql.Identifier(role)),
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.Identifier(postgres_schema, "token_ledger_migrations"), sql.Identifier(role)
        ),
        sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
            sql.SQL(", ").join(tables), sql.Identifier(role)
        ),
    ]
    with postgres_database.connect() as conn:
        for grant in grants:
            conn.execute(grant)
    url = psycopg.conninfo.make_conninfo(postgres_database.url, user=role, password="app")
    try:
        with TokenLedger.postgres(url, schema=postgres_schema) as ledger:
            ledger.open_account("u1", monthly_limit=10)
            spent = ledger.deduct("u1", 4, idempotency_key="request-1").transaction
            ledger.set_limit("u1", 20, overage_limit=5)
            ledger.grant("u1", 3)
            ledger.commit(ledger.reserve("u1", 6).id, 2)
            assert spent.id is not None
            ledger.refund(spent.id, 1)
            assert ledger.reset_all_stale() == 0
            assert ledger.reconcile() == []
            assert len(ledger.history("u1")) == 6
        if with_sql:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(schema))
                assert conn.execute("SELECT * FROM deduct_tokens('u1', 1)").fetchone()[0]
                assert conn.execute("SELECT auto_reset_monthly_tokens()").fetchone() == (0,)
    finally:
        with postgres_database.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
