"""What only PostgreSQL has: the ways to connect, schemas, native types, error translation."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from postgres.support import counting_cursor, wait_for_lock_wait
from postgres_server import Database
from token_ledger import (
    IdempotencyConflict,
    InsufficientTokens,
    InvalidInput,
    MonthlyResetPolicy,
    StorageError,
    TokenAccount,
    TokenLedger,
)
from token_ledger.postgres import PostgresRepository
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

UTC = timezone.utc


def test_a_url_a_connection_and_a_pool_reach_the_same_ledger(
    postgres_database: Database, postgres_schema: str
) -> None:
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as by_url:
        by_url.open_account("u1", monthly_limit=50)
        by_url.deduct("u1", 5)

    with psycopg.connect(postgres_database.url) as conn:
        with TokenLedger.postgres(conn, schema=postgres_schema) as by_connection:
            by_connection.deduct("u1", 6)
        assert not conn.closed, "a connection passed in stays the caller's to close"

    with ConnectionPool(postgres_database.url, min_size=1, max_size=2, open=True) as pool:
        with TokenLedger.postgres(pool, schema=postgres_schema) as by_pool:
            by_pool.deduct("u1", 7)
            assert by_pool.status("u1").monthly_used == 18
        assert not pool.closed, "a pool passed in stays the caller's to close"


def test_one_connection_is_shared_safely_by_threads(
    postgres_database: Database, postgres_schema: str
) -> None:
    with psycopg.connect(postgres_database.url) as conn:
        ledger = TokenLedger.postgres(conn, schema=postgres_schema)
        ledger.open_account("hot", monthly_limit=100)

        def spend(_: int) -> int:
            spent = 0
            for _ in range(25):
                with contextlib.suppress(InsufficientTokens):
                    spent += ledger.deduct("hot", 1).transaction.amount
            return spent

        with ThreadPoolExecutor(8) as threads:
            spent = sum(threads.map(spend, range(8)))

        assert spent == ledger.status("hot").monthly_used == 100


@pytest.mark.parametrize(
    ("target", "schema"),
    [(None, "public"), ("unused", ""), ("unused", "x" * 64), ("unused", "ä" * 32)],
    ids=["no-target", "empty-schema", "long-schema", "long-schema-in-bytes"],
)
def test_bad_targets_and_schema_names_are_refused(target: Any, schema: str) -> None:
    with pytest.raises(InvalidInput):
        TokenLedger.postgres(target, schema=schema)


def test_a_connection_inside_a_transaction_of_its_own_is_refused(
    postgres_database: Database, postgres_schema: str
) -> None:
    with psycopg.connect(postgres_database.url) as conn:
        ledger = TokenLedger.postgres(conn, schema=postgres_schema)
        conn.execute("SELECT 1")

        with pytest.raises(StorageError, match="inside a transaction"):
            ledger.open_account("u1", monthly_limit=10)

        conn.rollback()
        ledger.open_account("u1", monthly_limit=10)
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as other:
        assert other.get_account("u1").monthly_limit == 10


def test_schemas_keep_ledgers_apart_and_hold_their_tables(
    request: pytest.FixtureRequest, postgres_database: Database
) -> None:
    odd = 'Tenant "A"; DROP TABLE x'
    request.addfinalizer(lambda: postgres_database.drop_schema(odd))
    plain = postgres_database.new_schema(request)
    with (
        TokenLedger.postgres(postgres_database.url, schema=odd) as first,
        TokenLedger.postgres(postgres_database.url, schema=plain) as second,
    ):
        first.open_account("u1", monthly_limit=10)
        second.open_account("u1", monthly_limit=20)
        first.deduct("u1", 3)

        assert first.status("u1").to_dict()["monthlyUsed"] == 3
        assert second.status("u1").to_dict()["monthlyUsed"] == 0

    with postgres_database.connect() as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (odd,)
        ).fetchall()
    assert [row[0] for row in tables] == [
        "token_grants",
        "token_ledger_migrations",
        "token_notification_cursors",
        "token_notifications",
        "token_reservations",
        "token_transactions",
        "user_tokens",
    ]


def test_the_default_schema_is_public(postgres_database: Database) -> None:
    with postgres_database.new_database() as url:
        with TokenLedger.postgres(url) as ledger:
            ledger.open_account("u1", monthly_limit=10)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT user_id FROM public.user_tokens").fetchone()
    assert row == ("u1",)


def test_columns_have_native_types(postgres_database: Database, postgres_schema: str) -> None:
    PostgresRepository(postgres_database.url, schema=postgres_schema).close()

    with postgres_database.connect() as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s",
            (postgres_schema,),
        ).fetchall()
    types = {(table, column): data_type for table, column, data_type in rows}

    assert types[("user_tokens", "monthly_limit")] == "bigint"
    assert types[("user_tokens", "last_monthly_reset")] == "timestamp with time zone"
    assert types[("token_transactions", "id")] == "bigint"
    assert types[("token_transactions", "operation_context")] == "jsonb"
    assert types[("token_transactions", "success")] == "boolean"
    assert types[("token_transactions", "effects")] == "jsonb"
    assert types[("user_tokens", "overage_limit")] == "bigint"
    assert types[("token_grants", "expires_at")] == "timestamp with time zone"
    assert types[("token_reservations", "amount")] == "bigint"


def test_instants_come_back_in_utc_whatever_the_session_time_zone(
    postgres_database: Database, postgres_schema: str
) -> None:
    opened = datetime(2026, 1, 15, 12, 0, 0, 123456, tzinfo=UTC)
    with psycopg.connect(postgres_database.url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Asia/Kolkata'")
        ledger = TokenLedger.postgres(conn, schema=postgres_schema, clock=MovableClock(opened))
        ledger.open_account("u1", monthly_limit=10)
        entry = ledger.deduct("u1", 1).transaction

        account = ledger.get_account("u1")
        stored = ledger.history("u1")[0]

    assert account.created_at == opened
    assert account.created_at.utcoffset() == timedelta(0)
    assert stored.created_at.utcoffset() == timedelta(0)
    assert stored == entry


def test_a_server_that_cannot_be_reached_raises_storage_error(
    postgres_database: Database,
) -> None:
    url = psycopg.conninfo.make_conninfo(postgres_database.url, dbname="no_such_database")

    with pytest.raises(StorageError) as raised:
        TokenLedger.postgres(url)

    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


@pytest.mark.parametrize(
    "level", ["serializable", r"repeatable\ read"], ids=["serializable", "repeatable-read"]
)
@pytest.mark.parametrize("in_one_statement", [True, False], ids=["one-statement", "locked"])
def test_a_serialization_failure_reruns_the_whole_unit_of_work(
    postgres_database: Database, postgres_schema: str, level: str, in_one_statement: bool
) -> None:
    """At SERIALIZABLE or REPEATABLE READ, writing a row changed since the snapshot fails (40001).

    The deduction waits on a row another writer holds; that writer commits. In
    one statement, the statement fails, changes nothing and hands over to the
    locked path, which spends from the new usage; the caller never sees the
    failure. On the locked path alone, the first unit of work fails and the
    second one spends.
    """
    cursor = counting_cursor()
    pool = ConnectionPool(
        postgres_database.url,
        min_size=1,
        max_size=1,
        open=True,
        kwargs={
            "application_name": "tl-serializable",
            "options": f"-c default_transaction_isolation={level}",
            "cursor_factory": cursor,
        },
    )
    with pool, TokenLedger.postgres(pool, schema=postgres_schema) as ledger:
        if not in_one_statement:
            ledger.repository.deduct_directly = None  # type: ignore[attr-defined]
        ledger.open_account("u1", monthly_limit=10)
        with psycopg.connect(postgres_database.url) as other_writer:
            other_writer.execute(
                sql.SQL(
                    "UPDATE {} SET monthly_tokens_used = monthly_tokens_used + 3"
                    " WHERE user_id = 'u1'"
                ).format(sql.Identifier(postgres_schema, "user_tokens"))
            )
            with ThreadPoolExecutor(1) as thread:
                cursor.statements.clear()
                deduction = thread.submit(ledger.deduct, "u1", 5)
                wait_for_lock_wait(postgres_database, "tl-serializable")
                other_writer.commit()
                result = deduction.result()

        one_statement = [text for text in cursor.statements if text.startswith("WITH updated")]
        locks = [statement for statement in cursor.statements if "FOR UPDATE" in statement]
        if in_one_statement:
            assert (len(one_statement), len(locks)) == (1, 1), "one statement, then the lock"
        else:
            assert (len(one_statement), len(locks)) == (0, 2), "the unit of work ran twice"
        assert result.monthly_remaining == 2
        assert ledger.status("u1").monthly_used == 8
        assert len(ledger.history("u1")) == 1


def test_a_deadlock_reruns_the_whole_unit_of_work(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The bulk reset holds ``a`` and waits for ``b``; another writer holds ``b``, wants ``a``.

    PostgreSQL aborts the session that detects the cycle first, which is the
    one that has waited longest: the bulk reset, whose second attempt succeeds.
    The first attempt is the set-based statement of the batch, which changes
    nothing when it fails; the second the batch's unit of work, which locks again.
    """
    clock = MovableClock(datetime(2026, 1, 15, tzinfo=UTC))
    cursor = counting_cursor()
    pool = ConnectionPool(
        postgres_database.url,
        min_size=1,
        max_size=1,
        open=True,
        kwargs={"application_name": "tl-deadlock", "cursor_factory": cursor},
    )
    table = sql.Identifier(postgres_schema, "user_tokens")
    lock = sql.SQL("SELECT 1 FROM {} WHERE user_id = %s FOR UPDATE").format(table)
    with pool, TokenLedger.postgres(pool, schema=postgres_schema, clock=clock) as ledger:
        for user_id in ("a", "b"):
            ledger.open_account(user_id, monthly_limit=10)
            ledger.deduct(user_id, 4)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        with psycopg.connect(postgres_database.url) as other_writer:
            other_writer.execute(lock, ("b",))
            with ThreadPoolExecutor(2) as threads:
                cursor.statements.clear()
                bulk_reset = threads.submit(ledger.reset_all_stale)
                wait_for_lock_wait(postgres_database, "tl-deadlock")
                closing_the_cycle = threads.submit(other_writer.execute, lock, ("a",))
                closing_the_cycle.result()
                other_writer.commit()
                reset_count = bulk_reset.result()

        locks = [statement for statement in cursor.statements if "FOR UPDATE" in statement]
        assert len(locks) == 2, "the batch was attempted twice"
        assert reset_count == 2
        assert sorted(e.user_id for e in ledger.history(operation_type="reset")) == ["a", "b"]


@pytest.mark.parametrize("other_writer_commits", [True, False], ids=["commits", "rolls-back"])
def test_a_key_stored_concurrently_for_another_user_conflicts(
    postgres_database: Database, postgres_schema: str, other_writer_commits: bool
) -> None:
    """The unique index makes the second writer of a key wait for the first.

    If the first commits, the second's unique violation is retried and the
    retry finds the other user's entry: the same ``IdempotencyConflict`` as
    in one process. If the first rolls back, the second simply goes on.
    """
    url = psycopg.conninfo.make_conninfo(postgres_database.url, application_name="tl-key")
    with TokenLedger.postgres(url, schema=postgres_schema) as ledger:
        ledger.open_account("u1", monthly_limit=50)
        with psycopg.connect(postgres_database.url) as other_writer:
            other_writer.execute(
                sql.SQL(
                    "INSERT INTO {} (user_id, operation_type, amount, balance_after,"
                    " idempotency_key) VALUES ('u2', 'deduct', 5, 45, 'req-1')"
                ).format(sql.Identifier(postgres_schema, "token_transactions"))
            )
            with ThreadPoolExecutor(1) as thread:
                deduction = thread.submit(ledger.deduct, "u1", 5, idempotency_key="req-1")
                wait_for_lock_wait(postgres_database, "tl-key")
                if other_writer_commits:
                    other_writer.commit()
                else:
                    other_writer.rollback()
                outcome = deduction.exception()

        used = ledger.status("u1").monthly_used
    if other_writer_commits:
        assert isinstance(outcome, IdempotencyConflict)
        assert used == 0
    else:
        assert outcome is None
        assert used == 5


@pytest.mark.parametrize(
    ("used", "cause"),
    [(11, type(None)), (-1, psycopg.errors.CheckViolation)],
    ids=["above-the-limit", "negative"],
)
def test_the_tables_refuse_usage_no_operation_can_produce(
    postgres_database: Database, postgres_schema: str, used: int, cause: type[object]
) -> None:
    """The backstops behind the row lock, should a bug ever write such a value.

    Above the limit, the guarded UPDATE changes no row and the adapter refuses
    the unit of work; below zero, the CHECK constraint does.
    """
    repository = PostgresRepository(postgres_database.url, schema=postgres_schema)
    account = TokenAccount.open("u1", 10, MonthlyResetPolicy(), datetime(2026, 1, 15, tzinfo=UTC))
    with repository.unit_of_work() as work:
        work.insert_account(account)

    with pytest.raises(StorageError) as raised, repository.unit_of_work() as work:
        work.save_accounts([attrs.evolve(account, monthly_tokens_used=used)])

    assert type(raised.value.__cause__) is cause
    assert repository.get_account("u1") == account
    repository.close()


def test_the_guard_admits_overage_and_usage_kept_above_a_lowered_limit(
    postgres_database: Database, postgres_schema: str
) -> None:
    """Usage may grow up to the limit plus the overage limit; above the limits it may
    only stay or fall, and only in the stored period: a new period starts from zero."""
    repository = PostgresRepository(postgres_database.url, schema=postgres_schema)
    opened = attrs.evolve(
        TokenAccount.open("u1", 10, MonthlyResetPolicy(), datetime(2026, 1, 15, tzinfo=UTC)),
        overage_limit=5,
    )
    with repository.unit_of_work() as work:
        work.insert_account(opened)
    into_overage = attrs.evolve(opened, monthly_tokens_used=15)
    downgraded = attrs.evolve(into_overage, monthly_limit=4, overage_limit=0)
    partly_refunded = attrs.evolve(downgraded, monthly_tokens_used=12)
    for admitted in (into_overage, downgraded, partly_refunded):
        with repository.unit_of_work() as work:
            work.save_accounts([admitted])
        assert repository.get_account("u1") == admitted

    growing = attrs.evolve(partly_refunded, monthly_tokens_used=13)
    next_period = attrs.evolve(partly_refunded, last_monthly_reset=datetime(2026, 2, 1, tzinfo=UTC))
    for refused in (growing, next_period):
        with pytest.raises(StorageError), repository.unit_of_work() as work:
            work.save_accounts([refused])
        assert repository.get_account("u1") == partly_refunded
    repository.close()


def test_limits_that_add_up_past_bigint_do_not_break_the_guard(
    postgres_database: Database, postgres_schema: str
) -> None:
    most = 2**63 - 1
    repository = PostgresRepository(postgres_database.url, schema=postgres_schema)
    opened = TokenAccount.open("u1", most, MonthlyResetPolicy(), datetime(2026, 1, 15, tzinfo=UTC))
    spent = attrs.evolve(opened, overage_limit=most, monthly_tokens_used=most)
    with repository.unit_of_work() as work:
        work.insert_account(opened)
        work.save_accounts([spent])

    assert repository.get_account("u1") == spent
    repository.close()
