"""Connections the server closed while they sat idle: replaced, never a failed call."""

from __future__ import annotations

import select
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from postgres.support import PATIENCE, EndHoldingProxy, wait_for_backend_exit
from postgres_server import Database
from token_ledger import StorageError, TokenLedger
from token_ledger._postgres_errors import alive
from token_ledger.account import TokenAccount
from token_ledger.postgres import PostgresRepository, PostgresUnitOfWork

pytestmark = pytest.mark.postgres


@pytest.fixture
def application_name() -> str:
    """A name for this test's connections only, so that it terminates nobody else's."""
    return f"tl-faults-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(postgres_database: Database, application_name: str) -> str:
    return psycopg.conninfo.make_conninfo(postgres_database.url, application_name=application_name)


def terminate(database: Database, application_name: str) -> int:
    """Terminate every backend named ``application_name``, as an operator would; how many."""
    with database.connect() as admin:
        pids = [
            row[0]
            for row in admin.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            )
        ]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for pid in pids:
        # Gone, and so its FATAL is waiting on the socket, before the next call.
        wait_for_backend_exit(database, pid)
    return len(pids)


def every_call_after_a_termination(
    ledger: TokenLedger, kill: Callable[[], int]
) -> Iterator[tuple[str, Any]]:
    """Each public path (write, account read, log read, scans) on freshly killed connections."""
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("deduct", lambda: ledger.deduct("u1", 7, idempotency_key="after-kill")),
        ("status", lambda: ledger.status("u1")),
        ("history", lambda: ledger.history("u1")),
        ("health", ledger.health),
        ("reconcile", ledger.reconcile),
    ]
    for name, call in calls:
        assert kill() >= 1, f"no idle connection was there to kill before {name}"
        yield name, call()


def assert_recorded_once(ledger: TokenLedger, results: dict[str, Any]) -> None:
    assert results["status"].monthly_used == 3 + 7
    deductions = [e for e in results["history"] if e.idempotency_key == "after-kill"]
    assert len(deductions) == 1
    assert results["health"].total_users == 1
    assert results["reconcile"] == []
    assert ledger.status("u1").monthly_used == 10


def test_a_ledger_from_a_url_replaces_connections_killed_while_idle(
    postgres_database: Database, postgres_schema: str, url: str, application_name: str
) -> None:
    with TokenLedger.postgres(url, schema=postgres_schema) as ledger:
        ledger.open_account("u1", monthly_limit=100)
        ledger.deduct("u1", 3)

        results = dict(
            every_call_after_a_termination(
                ledger, lambda: terminate(postgres_database, application_name)
            )
        )

        assert_recorded_once(ledger, results)


def test_a_pool_of_your_own_whose_idle_connections_all_died_is_used_again(
    postgres_database: Database, postgres_schema: str, url: str, application_name: str
) -> None:
    with ConnectionPool(url, min_size=3, max_size=3, open=True) as pool:
        TokenLedger.postgres(pool, schema=postgres_schema).open_account("u1", monthly_limit=100)
        pool.wait()  # all three idle, so all three die
        assert terminate(postgres_database, application_name) == 3

        # Opening a ledger runs the migrations' check on the pool: a dead connection too.
        ledger = TokenLedger.postgres(pool, schema=postgres_schema)
        ledger.deduct("u1", 3)

        def kill_all_idle() -> int:
            pool.wait()
            return terminate(postgres_database, application_name)

        results = dict(every_call_after_a_termination(ledger, kill_all_idle))

        assert_recorded_once(ledger, results)
        assert pool.get_stats()["returns_bad"] >= 3 + 5 * 3, "the dead ones went back, discarded"


def test_a_connection_whose_farewell_came_before_the_end_of_its_stream_is_not_alive(
    postgres_database: Database, application_name: str
) -> None:
    """A terminated backend leaves pg_stat_activity before it closes its socket, so its FATAL
    message can wait on the socket without the end of the stream. Such a connection is dead
    too: a pool gives it back before any work (it used to take the statement, and fail)."""
    with EndHoldingProxy(postgres_database) as proxy:
        url = psycopg.conninfo.make_conninfo(proxy.conninfo, application_name=application_name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT 1")
            assert alive(conn)

            assert terminate(postgres_database, application_name) == 1
            proxy.wait_for_farewells(1)
            readable, _, _ = select.select([conn.pgconn.socket], [], [], PATIENCE)
            assert readable, "the farewell never reached the client"

            assert not alive(conn)


def test_your_own_connection_killed_while_idle_says_to_reconnect(
    postgres_database: Database, postgres_schema: str, url: str, application_name: str
) -> None:
    with psycopg.connect(url) as conn:
        ledger = TokenLedger.postgres(conn, schema=postgres_schema)
        ledger.open_account("u1", monthly_limit=100)
        ledger.deduct("u1", 3)
        assert terminate(postgres_database, application_name) == 1

        for call in (lambda: ledger.deduct("u1", 7), lambda: ledger.status("u1")):
            with pytest.raises(StorageError, match="reconnect") as raised:
                call()
            assert isinstance(raised.value.__cause__, psycopg.Error)

    with psycopg.connect(url) as again:
        assert TokenLedger.postgres(again, schema=postgres_schema).status("u1").monthly_used == 3


class _DyingRepository(PostgresRepository):
    """Its units of work lose their connection once the account (or its path) is locked.

    Its deductions all take the locked path (there is no one-statement deduction to
    try first), since what is tested is a unit of work.
    """

    deduct_directly = None

    def __init__(self, *args: Any, kill: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill = kill
        self.units_of_work = 0

    @contextmanager
    def unit_of_work(self) -> Iterator[PostgresUnitOfWork]:
        self.units_of_work += 1
        with super().unit_of_work() as work:
            loaded, loaded_path = work.load_account, work.load_path

            def load_then_die(user_id: str) -> TokenAccount | None:
                account = loaded(user_id)
                assert self.kill() >= 1
                return account

            def load_path_then_die(user_id: str) -> list[TokenAccount]:
                path = loaded_path(user_id)
                assert self.kill() >= 1
                return path

            work.load_account = load_then_die  # type: ignore[method-assign]
            work.load_path = load_path_then_die  # type: ignore[method-assign]
            yield work


def test_a_unit_of_work_whose_connection_dies_after_begin_is_not_retried(
    postgres_database: Database, postgres_schema: str, url: str, application_name: str
) -> None:
    with TokenLedger.postgres(url, schema=postgres_schema) as setup:
        setup.open_account("u1", monthly_limit=100)
        setup.deduct("u1", 3)
        before = setup.history("u1")
    repository = _DyingRepository(
        url, schema=postgres_schema, kill=lambda: terminate(postgres_database, application_name)
    )
    try:
        with pytest.raises(StorageError):
            TokenLedger(repository).deduct("u1", 7, idempotency_key="never")
        assert repository.units_of_work == 1
    finally:
        repository.close()

    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        assert ledger.status("u1").monthly_used == 3
        assert ledger.history("u1") == before
        assert ledger.reconcile() == []
