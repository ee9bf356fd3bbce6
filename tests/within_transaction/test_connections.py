"""What ``within`` accepts, what it refuses and how; SQLAlchemy's Connection and Session."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import orm, text

from postgres_server import as_url
from token_ledger import InvalidInput, TokenLedger, TokenLedgerError, TransientStorageError
from token_ledger.within import (
    TransactionRequired,
    UnsupportedConnection,
    WriteLockUnavailable,
    is_transient,
    retrying,
    within,
)
from within_transaction.engines import Engine, PostgresEngine


class FakePsycopg2Connection:
    """Stands for ``psycopg2.extensions.connection``, which is not installed here."""


FakePsycopg2Connection.__module__ = "psycopg2.extensions"


@pytest.mark.parametrize(
    ("connection", "says"),
    [
        (FakePsycopg2Connection(), "psycopg2 connections are not supported: token-ledger speaks"),
        (object(), "within\\(\\) takes a psycopg \\(3\\) Connection, a sqlite3.Connection"),
        ("sqlite:///tokens.db", "got a builtins.str"),
        (sqlalchemy.create_engine("sqlite://"), "a SQLAlchemy Engine has no transaction"),
    ],
    ids=["psycopg2", "object", "url", "sqlalchemy-engine"],
)
def test_anything_else_is_refused_with_what_to_pass_instead(connection: object, says: str) -> None:
    with pytest.raises(UnsupportedConnection, match=says) as refused:
        within(TokenLedger.memory(), connection).__enter__()

    assert isinstance(refused.value, InvalidInput)
    assert isinstance(refused.value, TypeError)
    assert isinstance(refused.value, TokenLedgerError)


def test_a_sqlalchemy_connection_on_another_driver_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a MySQL or asyncpg driver would be: named, with what to pass instead."""

    class OtherDriverConnection:
        pass

    with sqlalchemy.create_engine("sqlite://").connect() as conn:
        monkeypatch.setattr(
            type(conn.connection), "driver_connection", property(lambda _: OtherDriverConnection())
        )
        with pytest.raises(UnsupportedConnection, match=r"runs on a .*OtherDriverConnection"):
            within(TokenLedger.memory(), conn).__enter__()


# SQLAlchemy on each engine


Base: Any = orm.declarative_base()


def sqlalchemy_url(engine: Engine) -> str:
    if isinstance(engine, PostgresEngine):
        return as_url(engine.url).replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{engine.path}"


def orders_table(engine: Engine) -> str:
    return f'"{engine.schema}".orders' if isinstance(engine, PostgresEngine) else "orders"


@pytest.fixture
def sa_engine(engine: Engine) -> Iterator[sqlalchemy.Engine]:
    made = sqlalchemy.create_engine(sqlalchemy_url(engine))
    yield made
    made.dispose()


def insert_order(conn: sqlalchemy.Connection | orm.Session, engine: Engine, order_id: str) -> None:
    conn.execute(
        text(f"INSERT INTO {orders_table(engine)} (id, user_id) VALUES (:id, 'u1')"),
        {"id": order_id},
    )


def test_a_sqlalchemy_connection_commits_and_rolls_back_with_the_ledger(
    engine: Engine, sa_engine: sqlalchemy.Engine
) -> None:
    engine.ledger.open_account("u1", monthly_limit=10)

    with sa_engine.begin() as conn:
        insert_order(conn, engine, "kept")
        with within(engine.ledger, conn) as tokens:
            tokens.deduct("u1", 3)

    def fail_after_spending() -> None:
        with sa_engine.begin() as conn:
            insert_order(conn, engine, "dropped")
            with within(engine.ledger, conn) as tokens:
                tokens.deduct("u1", 4)
            raise RuntimeError("the application failed")

    with pytest.raises(RuntimeError, match="the application failed"):
        fail_after_spending()

    assert engine.orders() == {"kept"}
    assert engine.ledger.status("u1").monthly_used == 3
    assert engine.ledger.reconcile() == []


def test_a_sqlalchemy_connection_not_yet_in_a_transaction_is_begun_and_left_to_commit(
    engine: Engine, sa_engine: sqlalchemy.Engine
) -> None:
    engine.ledger.open_account("u1", monthly_limit=10)

    with sa_engine.connect() as conn:
        with within(engine.ledger, conn) as tokens:
            tokens.deduct("u1", 3)
        assert conn.in_transaction()
        conn.commit()
    with sa_engine.connect() as conn, within(engine.ledger, conn) as tokens:
        tokens.deduct("u1", 4)  # never committed: rolled back when the connection closes

    assert engine.ledger.status("u1").monthly_used == 3


def test_a_sqlalchemy_autocommit_connection_is_refused(
    engine: Engine, sa_engine: sqlalchemy.Engine
) -> None:
    engine.ledger.open_account("u1", monthly_limit=10)
    autocommit = sa_engine.execution_options(isolation_level="AUTOCOMMIT")

    with autocommit.connect() as conn, pytest.raises(TransactionRequired, match="on its own"):
        within(engine.ledger, conn).__enter__()


class Order(Base):
    __tablename__ = "orders"

    id: orm.Mapped[str] = orm.mapped_column(primary_key=True)
    user_id: orm.Mapped[str]


def test_a_session_is_flushed_first_and_commits_with_the_ledger(
    engine: Engine, sa_engine: sqlalchemy.Engine
) -> None:
    engine.ledger.open_account("u1", monthly_limit=10)
    schema = {None: engine.schema} if isinstance(engine, PostgresEngine) else {}
    mapped = sa_engine.execution_options(schema_translate_map=schema)
    sessions = orm.sessionmaker(mapped)

    with sessions.begin() as session:
        session.add(Order(id="kept", user_id="u1"))
        with within(engine.ledger, session) as tokens:
            assert not session.new  # flushed before the ledger's statements
            tokens.deduct("u1", 3)
    with sessions() as session:
        session.add(Order(id="dropped", user_id="u1"))
        with within(engine.ledger, session) as tokens:
            tokens.deduct("u1", 4)
        session.rollback()

    assert engine.orders() == {"kept"}
    assert engine.ledger.status("u1").monthly_used == 3


# Retrying the whole transaction


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TransientStorageError("lost a race"), True),
        (WriteLockUnavailable("read first"), True),
        (psycopg.errors.SerializationFailure("40001"), True),
        (psycopg.errors.DeadlockDetected("40P01"), True),
        (
            sqlalchemy.exc.OperationalError("COMMIT", {}, psycopg.errors.SerializationFailure()),
            True,
        ),
        (sqlite3.OperationalError("database is locked"), True),
        (psycopg.errors.UniqueViolation("23505"), False),
        (sqlite3.OperationalError("no such table: orders"), False),
        (ValueError("no"), False),
    ],
)
def test_is_transient_knows_the_errors_a_new_attempt_may_resolve(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient


def test_is_transient_follows_the_cause_a_framework_wrapped() -> None:
    """Django raises its own OperationalError from the driver's."""

    class FrameworkError(Exception):
        pass

    def raise_wrapped(explicitly: bool) -> None:
        try:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        except psycopg.Error as driver_error:
            if explicitly:
                raise FrameworkError("wrapped") from driver_error
            raise FrameworkError("raised while handling it, not because of it") from None

    with pytest.raises(FrameworkError) as wrapped:
        raise_wrapped(explicitly=True)
    with pytest.raises(FrameworkError) as unrelated:
        raise_wrapped(explicitly=False)

    assert is_transient(wrapped.value)
    assert not is_transient(unrelated.value)


def test_retrying_runs_again_after_transient_failures_and_stops_at_anything_else() -> None:
    calls: list[int] = []

    def twice_transient() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStorageError("again")
        return "done"

    assert retrying(twice_transient) == "done"
    assert len(calls) == 3

    def always(error: Exception) -> Any:
        def run() -> None:
            calls.append(1)
            raise error

        return run

    calls.clear()
    with pytest.raises(ValueError, match="bad"):
        retrying(always(ValueError("bad")))
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(TransientStorageError):
        retrying(always(TransientStorageError("again")), attempts=3)
    assert len(calls) == 3
    with pytest.raises(InvalidInput):
        retrying(lambda: None, attempts=0)


def test_importing_within_imports_no_driver_or_framework() -> None:
    """They are imported by the application that made the connection, never by the library."""
    code = (
        "import sys, token_ledger.within;"
        " print(sorted(m for m in ('psycopg', 'sqlalchemy', 'django') if m in sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == "[]"
