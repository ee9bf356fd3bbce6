"""Eight application processes per engine, each paying for its orders in its own transactions.

Demand is about three times the limit; about 60% of the transactions mean to
commit, the others roll back or raise after spending. Whatever interleaving
happens, what committed must add up: the orders, the deductions, the log and
the usage are the same, and the limit holds.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from postgres_server import Database
from token_ledger import OperationType
from within_transaction import workers
from within_transaction.engines import Engine, PostgresEngine, SQLiteEngine
from within_transaction.workers import Outcome

pytestmark = pytest.mark.slow

PROCESSES = 8
ROUNDS = 150  # per process, 1 to 5 tokens each: 8 x 150 x 3 = 3,600 tokens asked for
LIMIT = 1200


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    """Eight processes sharing a start line; a fork server that imported the workers makes them."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["within_transaction.workers"])
    else:
        context = multiprocessing.get_context("spawn")
    start_line = context.Barrier(PROCESSES)
    with ProcessPoolExecutor(
        PROCESSES,
        mp_context=context,
        initializer=workers.join_start_line,
        initargs=(start_line,),
    ) as pool:
        yield pool


def run_shops(
    pool: ProcessPoolExecutor, work: Callable[..., Outcome], arguments: tuple[Any, ...]
) -> list[Outcome]:
    futures = [pool.submit(work, *arguments, ROUNDS, seed) for seed in range(PROCESSES)]
    return [future.result(timeout=240) for future in futures]


def check(engine: Engine, outcomes: list[Outcome], may_give_up: set[str]) -> None:
    """Everything that committed adds up; a transaction gave up only with a typed conflict."""
    committed = [entry for outcome in outcomes for entry in outcome.committed]
    ledger = engine.ledger
    log = ledger.history("u1", limit=10_000)

    assert [surprise for outcome in outcomes for surprise in outcome.surprises] == []
    assert {gave_up for outcome in outcomes for gave_up in outcome.gave_up} <= may_give_up
    assert engine.orders() == {order_id for order_id, _, _ in committed}
    assert {(e.idempotency_key, e.amount, e.id) for e in log} == set(committed)
    assert all(e.operation_type is OperationType.DEDUCT and e.success for e in log)
    usage = ledger.status("u1").monthly_used
    assert usage == sum(amount for _, amount, _ in committed) == sum(e.amount for e in log)
    assert usage <= LIMIT
    assert sum(outcome.refused for outcome in outcomes) > 0  # the limit was fought over
    assert usage > LIMIT - 5  # so, since committed usage only grows, it was reached
    assert sum(o.rolled_back for o in outcomes) > 0
    assert sum(o.raised for o in outcomes) > 0
    assert ledger.reconcile() == []


def test_eight_sqlite_processes_spend_only_what_their_committed_orders_paid_for(
    sqlite_engine: SQLiteEngine, processes: ProcessPoolExecutor
) -> None:
    sqlite_engine.ledger.open_account("u1", monthly_limit=LIMIT)

    outcomes = run_shops(processes, workers.sqlite_shop, (str(sqlite_engine.path), "u1"))

    # Only a transaction that read first can be refused the write lock, and it is told so.
    check(sqlite_engine, outcomes, {"read-first: WriteLockUnavailable"})


@pytest.mark.postgres
def test_eight_postgres_processes_at_every_isolation_level_never_overspend(
    postgres_engine: PostgresEngine, postgres_database: Database, processes: ProcessPoolExecutor
) -> None:
    postgres_engine.ledger.open_account("u1", monthly_limit=LIMIT)
    arguments = (postgres_database.url, postgres_engine.schema, "u1")

    outcomes = run_shops(processes, workers.postgres_shop, arguments)

    # Only snapshots older than the row they lock conflict: REPEATABLE READ and SERIALIZABLE.
    conflicts = {f"{level}: TransientStorageError" for level in ("REPEATABLE READ", "SERIALIZABLE")}
    check(postgres_engine, outcomes, conflicts | {"SERIALIZABLE: SerializationFailure"})
    assert sum(o.attempts for o in outcomes) > PROCESSES * ROUNDS  # conflicts were retried
