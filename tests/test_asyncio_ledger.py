"""``AsyncTokenLedger`` beyond the contract: opening and closing, cancellation at random
points, many tasks on one account, the retry rule, and transactions the caller owns.

The contract suite itself runs on the async ledger in ``tests/contract/test_async_engines.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from postgres_server import Database
from token_ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidInput,
    StorageError,
    TokenLedger,
    TransientStorageError,
)
from token_ledger.asyncio_application import AsyncTokenLedger
from token_ledger.asyncio_storage import (
    InlineRepository,
    ThreadedRepository,
    guarded,
    write_with_retries_async,
)
from token_ledger.memory import MemoryRepository
from token_ledger.sqlite import SQLiteRepository
from token_ledger.storage import WRITE_ATTEMPTS
from token_ledger.within import TransactionRequired, UnsupportedConnection

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


# Engines: an async ledger, and what the tests need to check it afterwards.


@attrs.define
class Engine:
    """An async ledger of one engine, and how to tell that its connections are all clean."""

    ledger: AsyncTokenLedger
    pool: AsyncConnectionPool[Any] | None = None
    application_name: str | None = None
    database: Database | None = None

    async def assert_connections_clean(self) -> None:
        """Every pooled connection is back in the pool, and none is inside a transaction.

        A task cancelled while it waited for a connection, just as the pool handed it one,
        has that connection put back by the pool's own worker task, a moment later: it is
        given that moment (a bounded wait, long enough for a machine shared with other
        work: its rollback and the server's cancel may queue behind them), then judged.
        """
        if self.pool is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        stats = self.pool.get_stats()
        while stats["pool_available"] != stats["pool_size"] and loop.time() < deadline:
            await asyncio.sleep(0.01)
            stats = self.pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"], stats
        assert stats.get("requests_waiting", 0) == 0, stats
        assert stats.get("returns_bad", 0) == 0, stats  # none came back closed or broken
        assert self.database is not None
        with self.database.connect() as conn:
            states = [
                row[0]
                for row in conn.execute(
                    "SELECT state FROM pg_stat_activity WHERE application_name = %s",
                    (self.application_name,),
                )
            ]
        assert states, "the pool's connections are not in pg_stat_activity"
        assert set(states) == {"idle"}, states


EngineFactory = Callable[[pytest.FixtureRequest, Path], Any]


@asynccontextmanager
async def memory_engine(request: pytest.FixtureRequest, directory: Path) -> AsyncIterator[Engine]:
    async with AsyncTokenLedger.memory() as ledger:
        yield Engine(ledger)


@asynccontextmanager
async def sqlite_engine(request: pytest.FixtureRequest, directory: Path) -> AsyncIterator[Engine]:
    async with AsyncTokenLedger.sqlite(directory / "tokens.db") as ledger:
        yield Engine(ledger)


@asynccontextmanager
async def postgres_engine(request: pytest.FixtureRequest, directory: Path) -> AsyncIterator[Engine]:
    database: Database = request.getfixturevalue("postgres_database")
    application_name = f"tl_async_{uuid.uuid4().hex[:12]}"
    async with AsyncConnectionPool(
        database.url,
        min_size=4,
        max_size=8,
        kwargs={"application_name": application_name},
        open=False,
    ) as pool:
        schema = database.new_schema(request)
        async with AsyncTokenLedger.postgres(pool, schema=schema) as ledger:
            yield Engine(ledger, pool, application_name, database)


ENGINES = [
    pytest.param(memory_engine, id="memory"),
    pytest.param(sqlite_engine, id="sqlite"),
    pytest.param(postgres_engine, id="postgres", marks=pytest.mark.postgres),
]


# Opening and closing


def test_async_with_opens_and_closes_a_sqlite_ledger(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger = AsyncTokenLedger.sqlite(tmp_path / "tokens.db")
        assert not (tmp_path / "tokens.db").exists()  # opened in the worker thread, later
        async with ledger:
            await ledger.open_account("u1", 50)
            assert (await ledger.deduct("u1", 5)).monthly_remaining == 45
        with pytest.raises(StorageError, match="closed"):
            await ledger.status("u1")

    run(scenario())
    with TokenLedger.sqlite(tmp_path / "tokens.db") as ledger:
        assert ledger.status("u1").monthly_used == 5


def test_the_first_call_opens_a_ledger_without_async_with(tmp_path: Path) -> None:
    async def scenario() -> int:
        ledger = AsyncTokenLedger.sqlite(tmp_path / "tokens.db")
        try:
            await ledger.open_account("u1", 50)
            return (await ledger.status("u1")).monthly_remaining
        finally:
            await ledger.close()

    assert run(scenario()) == 50


@pytest.mark.parametrize(
    ("url", "storage", "engine"),
    [
        ("memory://", InlineRepository, MemoryRepository),
        ("{tmp}/tokens.db", ThreadedRepository, SQLiteRepository),
        ("sqlite:///{tmp}/tokens.db", ThreadedRepository, SQLiteRepository),
    ],
)
def test_open_reads_a_database_url_as_the_sync_ledger_does(
    tmp_path: Path, url: str, storage: type, engine: type
) -> None:
    async def scenario() -> None:
        async with AsyncTokenLedger.open(url.format(tmp=tmp_path)) as ledger:
            assert isinstance(ledger.repository, storage)
            assert isinstance(ledger.repository.repository, engine)  # type: ignore[attr-defined]

    run(scenario())


@pytest.mark.postgres
def test_a_wrong_postgres_url_fails_at_open_with_libpqs_message(
    postgres_database: Database,
) -> None:
    url = psycopg.conninfo.make_conninfo(postgres_database.url, dbname="no_such_database")

    async def scenario() -> None:
        with pytest.raises(StorageError, match="no_such_database"):
            async with AsyncTokenLedger.postgres(url):
                pass

    run(scenario())


@pytest.mark.postgres
def test_a_postgres_url_makes_a_pool_that_close_closes(
    postgres_database: Database, request: pytest.FixtureRequest
) -> None:
    schema = postgres_database.new_schema(request)

    async def scenario() -> AsyncTokenLedger:
        async with AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger:
            await ledger.open_account("u1", 50)
            await ledger.deduct("u1", 7)
        return ledger

    ledger = run(scenario())
    assert ledger.repository._owned_pool is None  # type: ignore[attr-defined]
    with TokenLedger.postgres(postgres_database.url, schema=schema) as sync_ledger:
        assert sync_ledger.status("u1").monthly_used == 7


@pytest.mark.postgres
def test_one_async_connection_is_shared_in_turns_and_stays_the_callers(
    postgres_database: Database, request: pytest.FixtureRequest
) -> None:
    schema = postgres_database.new_schema(request)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_database.url) as conn:
            async with AsyncTokenLedger.postgres(conn, schema=schema) as ledger:
                await ledger.open_account("u1", 100)
                await asyncio.gather(*(ledger.deduct("u1", 1) for _ in range(20)))
                assert (await ledger.status("u1")).monthly_used == 20
                async with conn.transaction():
                    with pytest.raises(StorageError, match="inside a transaction"):
                        await ledger.status("u1")
            assert not conn.closed

    run(scenario())


def test_import_token_ledger_imports_no_asyncio_module_nor_driver() -> None:
    code = (
        "import sys, token_ledger\n"
        "names = ('asyncio', 'psycopg', 'psycopg_pool', 'fastapi',"
        " 'token_ledger.asyncio_application', 'token_ledger.postgres_async')\n"
        "print(sorted(m for m in names if m in sys.modules))\n"
        "token_ledger.AsyncTokenLedger.memory()\n"
        "print('psycopg' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()

    assert output == ["[]", "False"]


# The retry rule


class FlakyUnitsOfWork:
    """Units of work whose first ``failures`` attempts lose a race."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[int]:
        self.attempts += 1
        yield self.attempts

    async def operation(self, attempt: int) -> str:
        if attempt <= self.failures:
            raise TransientStorageError("lost a race")
        return f"done at attempt {attempt}"


def test_a_write_that_lost_a_race_is_run_again_as_the_sync_rule_says() -> None:
    flaky = FlakyUnitsOfWork(failures=WRITE_ATTEMPTS - 1)

    assert run(write_with_retries_async(flaky, flaky.operation)) == (
        f"done at attempt {WRITE_ATTEMPTS}"
    )


def test_after_every_attempt_lost_the_last_failure_is_raised() -> None:
    flaky = FlakyUnitsOfWork(failures=WRITE_ATTEMPTS)

    with pytest.raises(TransientStorageError):
        run(write_with_retries_async(flaky, flaky.operation))
    assert flaky.attempts == WRITE_ATTEMPTS


@pytest.mark.postgres
@pytest.mark.parametrize("make_engine", [p for p in ENGINES if p.id == "postgres"])  # type: ignore[attr-defined]
def test_tasks_racing_with_one_idempotency_key_spend_once(
    request: pytest.FixtureRequest, tmp_path: Path, make_engine: EngineFactory
) -> None:
    """The loser of the unique index retries and replays the winner's entry."""

    async def scenario() -> None:
        async with make_engine(request, tmp_path) as engine:
            ledger = engine.ledger
            await ledger.open_account("u1", 100)
            results = await asyncio.gather(
                *(ledger.deduct("u1", 3, idempotency_key="same") for _ in range(20))
            )
            assert {result.to_dict()["monthlyRemaining"] for result in results} == {97}
            assert len(await ledger.history("u1")) == 1
            await engine.assert_connections_clean()

    run(scenario())


@pytest.mark.postgres
def test_a_pooled_connection_the_server_closed_is_replaced_before_any_work(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with postgres_engine(request, tmp_path) as engine:
            await engine.ledger.open_account("u1", 100)
            assert engine.database is not None
            with engine.database.connect() as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (engine.application_name,),
                )
                # gone, and so their FATAL waits on each socket, before the next call
                for _ in range(500):
                    left = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (engine.application_name,),
                    ).fetchone()
                    if left == (0,):
                        break
                    await asyncio.sleep(0.01)
            for _ in range(3):
                await engine.ledger.deduct("u1", 1)
            assert (await engine.ledger.status("u1")).monthly_used == 3

    run(scenario())


# Cancellation


CANCELLATIONS = 200
ACCOUNTS = ("a", "b", "c")
AT_ONCE = 12


@attrs.define
class Tally:
    acknowledged: dict[str, int] = attrs.Factory(dict)  # idempotency key -> amount
    refused: set[str] = attrs.Factory(set)
    cancelled: int = 0


async def typical_write_seconds(ledger: AsyncTokenLedger) -> float:
    loop = asyncio.get_running_loop()
    durations = []
    for number in range(20):
        start = loop.time()
        await ledger.deduct("a", 1, idempotency_key=f"warm-{number}")
        durations.append(loop.time() - start)
    return sorted(durations)[len(durations) // 2]


async def cancel_at_random_points(ledger: AsyncTokenLedger, seed: int) -> Tally:
    """Writes in flight, a dozen at a time, each cancelled after a random delay (often at
    once, often midway through, sometimes too late), until enough were cancelled."""
    rng = random.Random(seed)
    tally = Tally()
    typical = await typical_write_seconds(ledger)
    number = 0

    async def write(key: str, user_id: str, amount: int, kind: int) -> None:
        try:
            if kind == 0:
                await ledger.deduct(user_id, amount, feature="cancel", idempotency_key=key)
            elif kind == 1:
                hold = await ledger.reserve(user_id, amount, idempotency_key=key)
                await ledger.commit(hold.id, amount)
            else:
                await ledger.grant(user_id, amount, idempotency_key=key)
                return
        except InsufficientTokens:
            tally.refused.add(key)
            return
        if kind == 0:
            tally.acknowledged[key] = amount

    while tally.cancelled < CANCELLATIONS and number < 20 * CANCELLATIONS:
        tasks = []
        for _ in range(AT_ONCE):
            number += 1
            user_id = rng.choice(ACCOUNTS)
            tasks.append(
                asyncio.create_task(
                    write(f"k-{number}", user_id, rng.randint(1, 3), rng.randrange(3))
                )
            )
        delays = [rng.choice((0.0, rng.uniform(0, 3 * typical))) for _ in tasks]
        for task, delay in sorted(zip(tasks, delays, strict=True), key=lambda pair: pair[1]):
            await asyncio.sleep(delay) if delay else None
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, asyncio.CancelledError):
                tally.cancelled += 1
            elif isinstance(outcome, BaseException):
                raise outcome
    return tally


@pytest.mark.parametrize("make_engine", ENGINES)
def test_cancelled_tasks_leave_nothing_half_written_and_every_connection_clean(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="psycopg")

    async def scenario() -> None:
        async with make_engine(request, tmp_path) as engine:
            ledger = engine.ledger
            for user_id in ACCOUNTS:
                await ledger.open_account(user_id, monthly_limit=10_000)
            tally = await cancel_at_random_points(ledger, seed=16)

            assert tally.cancelled >= CANCELLATIONS
            await engine.assert_connections_clean()
            assert await ledger.reconcile() == []
            logged: dict[str, int] = {}
            for user_id in ACCOUNTS:
                entries = await ledger.history(user_id, limit=10_000)
                assert len(entries) < 10_000
                for entry in entries:
                    if entry.idempotency_key is not None and entry.operation_type == "deduct":
                        assert entry.idempotency_key not in logged
                        logged[entry.idempotency_key] = entry.amount
            acknowledged = tally.acknowledged
            assert {key: logged.get(key) for key in acknowledged} == acknowledged

    run(scenario())
    # Nothing went back to a pool inside a transaction, or had to be closed by psycopg.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


def test_guarded_holds_further_cancellations_until_the_work_has_cleaned_up() -> None:
    steps: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            steps.append("cancelled once")
            await asyncio.sleep(0.05)  # a ROLLBACK, say
            steps.append("cleaned up")
            raise

    async def scenario() -> None:
        task = asyncio.create_task(guarded(work()))
        await asyncio.sleep(0.01)
        for _ in range(5):
            task.cancel()
            await asyncio.sleep(0.005)
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert steps == ["cancelled once", "cleaned up"]


# Many tasks on one account


@pytest.mark.parametrize("make_engine", ENGINES)
def test_five_hundred_tasks_on_one_account_at_three_times_its_limit_never_overspend(
    request: pytest.FixtureRequest, tmp_path: Path, make_engine: EngineFactory
) -> None:
    rng = random.Random(500)
    amounts = [rng.randint(1, 5) for _ in range(500)]
    limit = sum(amounts) // 3

    async def scenario() -> None:
        async with make_engine(request, tmp_path) as engine:
            ledger = engine.ledger
            await ledger.open_account("hot", monthly_limit=limit)

            async def spend(number: int, amount: int) -> int | None:
                try:
                    await ledger.deduct("hot", amount, idempotency_key=f"hot-{number}")
                except InsufficientTokens:
                    return None
                return amount

            spent = await asyncio.gather(*(spend(n, a) for n, a in enumerate(amounts)))

            acknowledged = [amount for amount in spent if amount is not None]
            status = await ledger.status("hot")
            assert status.monthly_used == sum(acknowledged) <= limit
            assert limit - status.monthly_used < 5  # refused only when too little was left
            entries = await ledger.history("hot", limit=1000)
            assert sorted(e.amount for e in entries if e.success) == sorted(acknowledged)
            assert len([e for e in entries if not e.success]) == spent.count(None)
            assert await ledger.reconcile() == []
            await engine.assert_connections_clean()

    run(scenario())


# Transactions the caller owns (PostgreSQL)


@pytest.fixture
def schema_with_account(postgres_database: Database, request: pytest.FixtureRequest) -> str:
    """A migrated schema with accounts ``u1`` and ``u2`` (limit 50 each) and a table of the
    application's."""
    schema = postgres_database.new_schema(request)
    with TokenLedger.postgres(postgres_database.url, schema=schema) as ledger:
        ledger.open_account("u1", 50)
        ledger.open_account("u2", 50)
    with postgres_database.connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.orders (id text PRIMARY KEY)").format(sql.Identifier(schema))
        )
    return schema


@asynccontextmanager
async def caller_connection(database: Database, **options: Any) -> AsyncIterator[Any]:
    conn = await psycopg.AsyncConnection.connect(database.url, **options)
    try:
        yield conn
    finally:
        await conn.close()


def sync_status(database: Database, schema: str) -> int:
    with TokenLedger.postgres(database.url, schema=schema) as ledger:
        return ledger.status("u1").monthly_used


@pytest.mark.postgres
def test_writes_within_a_callers_transaction_commit_with_it_and_only_then(
    postgres_database: Database, schema_with_account: str
) -> None:
    schema = schema_with_account

    async def scenario() -> None:
        async with (
            AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger,
            caller_connection(postgres_database) as conn,
        ):
            async with conn.transaction(), ledger.within(conn) as tokens:
                await conn.execute(
                    sql.SQL("INSERT INTO {}.orders VALUES ('o1')").format(sql.Identifier(schema))
                )
                await tokens.deduct("u1", 5, feature="order")
                assert (await tokens.status("u1")).monthly_used == 5  # sees its own write
                assert (await ledger.status("u1")).monthly_used == 0  # others do not, yet
                assert sync_status(postgres_database, schema) == 0
            assert (await ledger.status("u1")).monthly_used == 5

    run(scenario())


@pytest.mark.postgres
def test_a_callers_rollback_takes_the_ledgers_writes_with_it(
    postgres_database: Database, schema_with_account: str
) -> None:
    """A connection outside a transaction (not autocommit): psycopg begins one, left open."""
    schema = schema_with_account

    async def scenario() -> None:
        async with (
            AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger,
            caller_connection(postgres_database) as conn,
        ):
            async with ledger.within(conn) as tokens:
                await tokens.deduct("u1", 5)
                await tokens.grant("u1", 10)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            await conn.rollback()
            assert (await ledger.status("u1")).monthly_used == 0
            assert await ledger.history("u1") == []

    run(scenario())


@pytest.mark.postgres
def test_a_failed_write_rolls_back_to_its_savepoint_and_the_callers_work_stays(
    postgres_database: Database, schema_with_account: str
) -> None:
    schema = schema_with_account

    async def scenario() -> None:
        async with (
            AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger,
            caller_connection(postgres_database) as conn,
        ):
            async with conn.transaction(), ledger.within(conn) as tokens:
                await tokens.deduct("u1", 5, idempotency_key="order-1")
                await conn.execute(
                    sql.SQL("INSERT INTO {}.orders VALUES ('o1')").format(sql.Identifier(schema))
                )
                with pytest.raises(IdempotencyConflict):
                    await tokens.deduct("u1", 6, idempotency_key="order-1")
                with pytest.raises(AccountNotFound):
                    await tokens.deduct("nobody", 1)
                await tokens.deduct("u1", 1)  # the transaction is still usable
            assert (await ledger.status("u1")).monthly_used == 6
            rows = await (
                await conn.execute(
                    sql.SQL("SELECT id FROM {}.orders").format(sql.Identifier(schema))
                )
            ).fetchall()
            assert rows == [("o1",)]

    run(scenario())


@pytest.mark.postgres
def test_a_race_within_a_callers_transaction_is_raised_not_retried(
    postgres_database: Database, schema_with_account: str
) -> None:
    """Two transactions store one idempotency key: the second waits on the unique index,
    sees the first's COMMIT as a TransientStorageError (to retry its whole transaction, not
    retried here), and its transaction is still there to roll back."""
    schema = schema_with_account

    async def scenario() -> None:
        async with (
            AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger,
            caller_connection(postgres_database) as first,
            caller_connection(postgres_database) as second,
        ):
            async with ledger.within(first) as tokens_first, ledger.within(second) as tokens_second:
                await tokens_first.deduct("u1", 2, idempotency_key="shared")
                racing = asyncio.create_task(
                    tokens_second.deduct("u2", 2, idempotency_key="shared")
                )
                await asyncio.sleep(0.2)
                assert not racing.done()  # waiting for the first's key in the index
                await first.commit()
                with pytest.raises(TransientStorageError):
                    await racing
                assert second.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                await second.rollback()
                # retried as a whole, the second transaction now sees the first's entry
                with pytest.raises(IdempotencyConflict):
                    await tokens_second.deduct("u2", 2, idempotency_key="shared")
                await second.rollback()
            assert [e.user_id for e in await ledger.history()] == ["u1"]

    run(scenario())


@pytest.mark.postgres
def test_within_refuses_what_would_commit_at_once_or_cannot_commit(
    postgres_database: Database, schema_with_account: str
) -> None:
    schema = schema_with_account

    async def scenario() -> None:
        async with (
            AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger,
            caller_connection(postgres_database, autocommit=True) as autocommit,
            caller_connection(postgres_database) as failed,
        ):
            with pytest.raises(TransactionRequired, match="autocommit"):
                async with ledger.within(autocommit):
                    pass
            async with autocommit.transaction(), ledger.within(autocommit) as tokens:
                await tokens.deduct("u1", 1)  # inside a transaction of its own: fine
            with pytest.raises(psycopg.errors.DivisionByZero):
                await failed.execute("SELECT 1 / 0")
            with pytest.raises(TransactionRequired, match="roll it back"):
                async with ledger.within(failed):
                    pass
            with pytest.raises(UnsupportedConnection, match=r"psycopg\.AsyncConnection"):
                async with ledger.within("postgresql://not-a-connection"):
                    pass
            await failed.rollback()
            async with ledger.within(failed) as tokens:
                assert (await tokens.status("u1")).monthly_used == 1
            with pytest.raises(TransactionRequired, match="has ended"):
                await tokens.status("u1")
            assert (await ledger.status("u1")).monthly_used == 1

    run(scenario())


@pytest.mark.postgres
def test_a_task_cancelled_within_a_callers_transaction_leaves_it_usable(
    postgres_database: Database, schema_with_account: str
) -> None:
    """Cancelled while waiting for a locked row: the savepoint is rolled back, the
    connection is free, and the caller's transaction commits what it did before."""
    schema = schema_with_account

    async def cancel_while_waiting() -> None:
        async with (
            AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger,
            caller_connection(postgres_database) as holder,
            caller_connection(postgres_database) as conn,
        ):
            async with ledger.within(holder) as holding, ledger.within(conn) as tokens:
                await holding.deduct("u1", 1)
                await conn.execute(
                    sql.SQL("INSERT INTO {}.orders VALUES ('o1')").format(sql.Identifier(schema))
                )
                waiting = asyncio.create_task(tokens.deduct("u1", 2))
                await asyncio.sleep(0.2)
                assert not waiting.done()
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                await holder.commit()
                await conn.commit()
            assert (await ledger.status("u1")).monthly_used == 1
            rows = await (
                await conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.orders").format(sql.Identifier(schema))
                )
            ).fetchone()
            assert rows == (1,)

    run(cancel_while_waiting())


@pytest.mark.postgres
def test_within_a_sqlalchemy_async_session_commits_with_the_session(
    postgres_database: Database, schema_with_account: str
) -> None:
    pytest.importorskip("greenlet")
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    schema = schema_with_account
    parts = psycopg.conninfo.conninfo_to_dict(postgres_database.url)
    url = "postgresql+psycopg://"
    engine_url = url + "?" + "&".join(f"{k}={v}" for k, v in parts.items())

    async def scenario() -> None:
        engine = create_async_engine(engine_url)
        try:
            async with AsyncTokenLedger.postgres(postgres_database.url, schema=schema) as ledger:
                async with AsyncSession(engine) as session:
                    async with ledger.within(session) as tokens:
                        await session.execute(
                            text(f"INSERT INTO \"{schema}\".orders VALUES ('o1')")
                        )
                        await tokens.deduct("u1", 4)
                        assert (await ledger.status("u1")).monthly_used == 0
                    await session.commit()
                assert (await ledger.status("u1")).monthly_used == 4
                async with AsyncSession(engine) as session:
                    async with ledger.within(session) as tokens:
                        await tokens.deduct("u1", 4)
                    await session.rollback()
                assert (await ledger.status("u1")).monthly_used == 4
        finally:
            await engine.dispose()

    run(scenario())


def test_within_needs_a_postgres_ledger() -> None:
    async def scenario() -> None:
        async with AsyncTokenLedger.memory() as ledger:
            with pytest.raises(InvalidInput, match="PostgreSQL ledger"):
                async with ledger.within(object()):
                    pass

    run(scenario())
