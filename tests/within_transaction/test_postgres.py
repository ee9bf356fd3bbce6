"""PostgreSQL: connection states, the row lock until the caller ends, stricter isolation levels."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

from postgres.support import wait_for_lock_wait
from postgres_server import Database
from token_ledger import InsufficientTokens, TokenLedger, TransientStorageError
from token_ledger.postgres import MIGRATIONS
from token_ledger.testing import MovableClock
from token_ledger.within import (
    SchemaNotMigrated,
    TransactionRequired,
    UnsupportedConnection,
    is_transient,
    retrying,
    within,
)
from within_transaction.engines import PostgresEngine

pytestmark = pytest.mark.postgres


def test_autocommit_outside_a_transaction_is_refused_and_inside_one_joined(
    postgres_engine: PostgresEngine,
) -> None:
    postgres_engine.ledger.open_account("u1", monthly_limit=10)
    with postgres_engine.connect(autocommit=True) as conn:
        with pytest.raises(TransactionRequired, match="autocommit"):
            within(postgres_engine.ledger, conn).__enter__()

        with conn.transaction(), within(postgres_engine.ledger, conn) as tokens:
            tokens.deduct("u1", 3)

    assert postgres_engine.ledger.status("u1").monthly_used == 3


def test_without_autocommit_an_idle_connection_gets_the_transaction_psycopg_would_open(
    postgres_engine: PostgresEngine,
) -> None:
    """It stays open after the block: the caller's commit() or rollback() decides."""
    postgres_engine.ledger.open_account("u1", monthly_limit=10)
    with postgres_engine.connect() as conn:
        with within(postgres_engine.ledger, conn) as tokens:
            tokens.deduct("u1", 3)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.rollback()
        assert postgres_engine.ledger.status("u1").monthly_used == 0

        with within(postgres_engine.ledger, conn) as tokens:
            tokens.deduct("u1", 4)
        conn.commit()

    assert postgres_engine.ledger.status("u1").monthly_used == 4


def test_a_failed_transaction_is_refused_until_rolled_back(
    postgres_engine: PostgresEngine,
) -> None:
    with postgres_engine.connect() as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(TransactionRequired, match="roll it back"):
            within(postgres_engine.ledger, conn).__enter__()


def test_the_account_stays_locked_until_the_callers_transaction_ends(
    postgres_engine: PostgresEngine, postgres_database: Database, clock: MovableClock
) -> None:
    """Another deduction waits for the caller's COMMIT, then sees what it spent."""
    ledger = postgres_engine.ledger
    ledger.open_account("u1", monthly_limit=10)
    url = psycopg.conninfo.make_conninfo(postgres_database.url, application_name="waiter")
    with postgres_engine.connect() as conn, ThreadPoolExecutor(1) as other:
        with conn.transaction():
            with within(ledger, conn) as tokens:
                tokens.deduct("u1", 6)

            def deduct_elsewhere() -> int:
                with TokenLedger.postgres(
                    url, schema=postgres_engine.schema, clock=clock
                ) as waiter:
                    return waiter.deduct("u1", 3).monthly_remaining

            waiting = other.submit(deduct_elsewhere)
            wait_for_lock_wait(postgres_database, "waiter")  # blocked on the row, not done
            assert not waiting.done()

        assert waiting.result(timeout=60) == 1


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_stricter_isolation_level_never_overspends_and_its_conflict_is_transient(
    postgres_engine: PostgresEngine, level: str
) -> None:
    """A snapshot older than a concurrent deduction cannot spend from it: 40001, then a retry."""
    ledger = postgres_engine.ledger
    ledger.open_account("u1", monthly_limit=10)
    with postgres_engine.connect() as conn:
        conn.execute(sql.SQL("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL " + level))
        conn.commit()
        attempts: list[int] = []

        def spend_eight() -> int:
            attempts.append(len(attempts) + 1)
            with conn.transaction(), within(ledger, conn) as tokens:
                seen = tokens.status("u1").monthly_remaining  # the snapshot is taken here
                if len(attempts) == 1:
                    ledger.deduct("u1", 5)  # committed after the snapshot
                tokens.deduct("u1", 8)
                return seen

        with pytest.raises(TransientStorageError, match="run all of it again") as conflict:
            spend_eight()
        assert is_transient(conflict.value)
        assert conflict.value.__cause__ is not None
        assert conflict.value.__cause__.sqlstate == "40001"  # type: ignore[attr-defined]

        with pytest.raises(InsufficientTokens):
            retrying(spend_eight)  # sees the 5 spent elsewhere: 8 no longer fits

    assert attempts == [1, 2]
    assert ledger.status("u1").monthly_used == 5
    assert ledger.reconcile() == []


def test_a_deadlock_between_two_callers_surfaces_as_transient_for_one_of_them(
    postgres_engine: PostgresEngine,
) -> None:
    ledger = postgres_engine.ledger
    ledger.open_account("a", monthly_limit=10)
    ledger.open_account("b", monthly_limit=10)
    both_locked_one = threading.Barrier(2)

    def spend(first: str, second: str) -> TransientStorageError | None:
        with postgres_engine.connect() as conn:
            conn.execute("SET deadlock_timeout = '100ms'")
            try:
                with conn.transaction(), within(ledger, conn) as tokens:
                    tokens.deduct(first, 1)
                    both_locked_one.wait(30)
                    tokens.deduct(second, 1)
            except TransientStorageError as error:
                return error
            return None

    with ThreadPoolExecutor(2) as callers:
        outcomes = list(callers.map(spend, ["a", "b"], ["b", "a"]))

    failed = [outcome for outcome in outcomes if outcome is not None]
    assert len(failed) == 1
    assert is_transient(failed[0])
    assert failed[0].__cause__.sqlstate == "40P01"  # type: ignore[union-attr]
    assert ledger.status("a").monthly_used + ledger.status("b").monthly_used == 2
    assert ledger.reconcile() == []


def test_the_applications_own_loaders_do_not_change_what_the_ledger_reads(
    postgres_engine: PostgresEngine,
) -> None:
    """Django loads jsonb as text and timestamps in its zone: the ledger reads its own way."""
    postgres_engine.ledger.open_account("u1", monthly_limit=10)
    with postgres_engine.connect() as conn:
        conn.adapters.register_loader("jsonb", TextLoader)
        conn.adapters.register_loader("timestamptz", TextLoader)
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        with within(postgres_engine.ledger, conn) as tokens:
            tokens.deduct("u1", 3, context={"k": [1, 2]})
            entry = tokens.history("u1")[0]
        conn.commit()
        assert conn.execute("SELECT '{}'::jsonb").fetchone() == ("{}",)  # still the app's

    assert entry.operation_context == {"k": [1, 2]}
    assert entry == postgres_engine.ledger.history("u1")[0]


def test_the_schema_defaults_to_the_ledgers_and_a_missing_one_is_refused(
    postgres_engine: PostgresEngine, clock: MovableClock
) -> None:
    postgres_engine.ledger.open_account("u1", monthly_limit=10)
    rules = TokenLedger.memory(clock=clock)
    with postgres_engine.connect() as conn:
        postgres_engine.insert_order(conn, "order-1", "u1")
        with pytest.raises(SchemaNotMigrated, match="'public' has no token-ledger tables"):
            within(rules, conn).__enter__()  # a memory ledger has no schema: public
        with within(rules, conn, schema=postgres_engine.schema) as tokens:
            tokens.deduct("u1", 1)
        with within(postgres_engine.ledger, conn) as tokens:
            tokens.deduct("u1", 1)
        conn.commit()  # the refusal left the transaction usable

    assert postgres_engine.orders() == {"order-1"}
    assert postgres_engine.ledger.status("u1").monthly_used == 2


def test_an_older_or_newer_schema_is_refused(
    postgres_engine: PostgresEngine, postgres_database: Database
) -> None:
    table = sql.Identifier(postgres_engine.schema, "token_ledger_migrations")
    with postgres_engine.connect() as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE version > 1").format(table))
        conn.commit()
        with pytest.raises(SchemaNotMigrated, match="is at version 1"):
            within(postgres_engine.ledger, conn).__enter__()
        conn.rollback()
        conn.execute(
            sql.SQL("INSERT INTO {} (version) VALUES (2), (%s)").format(table),
            (MIGRATIONS[-1].version + 1,),
        )
        conn.commit()
        with pytest.raises(Exception, match="newer than this token-ledger") as newer:
            within(postgres_engine.ledger, conn).__enter__()
        assert not isinstance(newer.value, SchemaNotMigrated)


def test_an_asyncio_connection_is_refused_with_what_to_pass(postgres_database: Database) -> None:
    async def refuse() -> str:
        conn = await psycopg.AsyncConnection.connect(postgres_database.url)
        try:
            with pytest.raises(UnsupportedConnection, match="asyncio") as refused:
                within(TokenLedger.memory(), conn).__enter__()
            return str(refused.value)
        finally:
            await conn.close()

    message: Any = asyncio.run(refuse())
    assert "psycopg (3) Connection" in message
