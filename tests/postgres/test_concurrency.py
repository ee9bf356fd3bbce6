"""Sixteen connections at once, from threads and from processes: nothing overspent or lost."""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from postgres import workers
from postgres.conftest import WORKERS
from postgres.support import on_every_worker, wait_for_backend_exit, wait_for_lock_wait
from postgres.workers import Outcome, Plan
from postgres_server import Database
from token_ledger import OperationType, TokenLedger
from token_ledger.clock import system_clock
from token_ledger.postgres import PostgresRepository
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

Accounts = dict[str, int]
Runner = Callable[[Callable[..., Outcome], list[tuple[Any, ...]]], list[Outcome]]

HOT: Accounts = {"hot": 240}
MANY: Accounts = {f"user-{n:02d}": 20 for n in range(32)}


@pytest.fixture(params=["threads", pytest.param("processes", marks=pytest.mark.slow)])
def run_workers(
    request: pytest.FixtureRequest, postgres_database: Database, postgres_schema: str
) -> Runner:
    """Runs ``work(ledger, *arguments)`` once per worker, all at once.

    The threads share one ledger over a pool of sixteen connections; each
    process has a ledger of its own.
    """
    url = postgres_database.url
    if request.param == "processes":
        processes: ProcessPoolExecutor = request.getfixturevalue("worker_processes")
        return lambda work, calls: on_every_worker(
            processes,
            workers.in_process,
            [(url, postgres_schema, work, *arguments) for arguments in calls],
        )

    def run_in_threads(work: Callable[..., Outcome], calls: list[tuple[Any, ...]]) -> list[Outcome]:
        start_line = threading.Barrier(WORKERS)
        pool = ConnectionPool(url, min_size=WORKERS, max_size=WORKERS, open=True)
        with pool, TokenLedger.postgres(pool, schema=postgres_schema) as ledger:

            def in_thread(arguments: tuple[Any, ...]) -> Outcome:
                start_line.wait(workers.START_TIMEOUT)
                return work(ledger, *arguments)

            with ThreadPoolExecutor(WORKERS) as threads:
                return list(threads.map(in_thread, calls))

    return run_in_threads


def open_accounts(database: Database, schema: str, accounts: Accounts) -> TokenLedger:
    ledger = TokenLedger.postgres(database.url, schema=schema)
    for user_id, limit in accounts.items():
        ledger.open_account(user_id, monthly_limit=limit)
    return ledger


def plans_asking_three_times_the_limits(accounts: Accounts, seed: int) -> list[Plan]:
    """Deductions of 1 to 5 tokens adding up to three times each limit, dealt to the workers."""
    rng = random.Random(seed)
    asks: Plan = []
    for user_id, limit in accounts.items():
        asked = 0
        while asked < 3 * limit:
            amount = rng.randint(1, 5)
            asks.append((user_id, amount, None))
            asked += amount
    rng.shuffle(asks)
    return [asks[worker::WORKERS] for worker in range(WORKERS)]


def assert_the_log_explains_every_balance(ledger: TokenLedger, accounts: Accounts) -> None:
    """Replayed in id order, each account's entries give its usage, never above its limit."""
    for user_id, limit in accounts.items():
        entries = ledger.history(user_id, operation_type="deduct", limit=10_000)[::-1]
        used = 0
        for entry in entries:
            if entry.success:
                used += entry.amount
            assert entry.balance_after == limit - used
        assert 0 < used <= limit
        assert ledger.get_account(user_id).monthly_tokens_used == used


@pytest.mark.parametrize("accounts", [HOT, MANY], ids=["one-hot-account", "many-accounts"])
def test_sixteen_workers_never_overspend(
    postgres_database: Database, postgres_schema: str, run_workers: Runner, accounts: Accounts
) -> None:
    ledger = open_accounts(postgres_database, postgres_schema, accounts)
    plans = plans_asking_three_times_the_limits(accounts, seed=len(accounts))

    outcomes = run_workers(workers.spend, [(plan,) for plan in plans])

    assert [surprise for _, surprises in outcomes for surprise in surprises] == []
    with ledger:
        assert_the_log_explains_every_balance(ledger, accounts)
        acknowledged: dict[str, int] = defaultdict(int)
        for seen, _ in outcomes:
            for user_id, amount, _key, entry_id in seen:
                if entry_id is not None:
                    acknowledged[user_id] += amount
        for user_id in accounts:
            assert acknowledged[user_id] == ledger.status(user_id).monthly_used
        asked = sum(len(plan) for plan in plans)
        assert len(ledger.history(operation_type="deduct", limit=10_000)) == asked
        assert ledger.history(success=False, limit=1), "the demand was meant to be refused"


def test_sixteen_workers_spending_grants_overage_and_holds_never_overspend(
    postgres_database: Database, postgres_schema: str, run_workers: Runner
) -> None:
    """Every write of an account's grants and holds queues on the account's row."""
    with open_accounts(postgres_database, postgres_schema, {"hot": 60}) as ledger:
        ledger.set_limit("hot", overage_limit=20)
        for amount in (15, 25):
            ledger.grant("hot", amount)

    outcomes = run_workers(
        workers.spend_hold_and_refund, [("hot", 12, seed) for seed in range(WORKERS)]
    )

    assert [surprise for _, surprises in outcomes for surprise in surprises] == []
    acknowledged = sum(amount for seen, _ in outcomes for _user, amount, _key, _id in seen)
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        account = ledger.get_account("hot")
        spent = account.monthly_tokens_used + 40 - account.grant_balance
        assert acknowledged == spent <= 60 + 20 + 40
        assert (account.reserved_tokens, account.holds) == (0, ())
        assert ledger.reconcile() == []
        assert ledger.history("hot", success=False, limit=1), "the demand was meant to be refused"


def test_a_request_retried_by_every_worker_applies_once(
    postgres_database: Database, postgres_schema: str, run_workers: Runner
) -> None:
    """Sixteen workers send the same 64 keyed requests, each in its own order."""
    accounts = {f"user-{n}": 20 for n in range(8)}
    ledger = open_accounts(postgres_database, postgres_schema, accounts)
    rng = random.Random(7)
    requests: Plan = [(f"user-{n % 8}", rng.randint(1, 5), f"request-{n}") for n in range(64)]
    plans = [rng.sample(requests, len(requests)) for _ in range(WORKERS)]

    outcomes = run_workers(workers.spend, [(plan,) for plan in plans])

    assert [surprise for _, surprises in outcomes for surprise in surprises] == []
    answers: dict[str | None, set[int | None]] = defaultdict(set)
    for seen, _ in outcomes:
        for _user_id, _amount, key, entry_id in seen:
            answers[key].add(entry_id)
    assert all(len(ids) == 1 for ids in answers.values()), "every worker got the same answer"
    with ledger:
        entries = ledger.history(operation_type=OperationType.DEDUCT, limit=10_000)
        assert sorted(e.idempotency_key or "" for e in entries) == sorted(k for _, _, k in requests)
        assert_the_log_explains_every_balance(ledger, accounts)


def test_sixteen_workers_using_a_new_account_at_once_create_it_once(
    postgres_database: Database, postgres_schema: str, run_workers: Runner
) -> None:
    PostgresRepository(postgres_database.url, schema=postgres_schema).close()

    outcomes = run_workers(workers.open_account_and_spend, [("newcomer", 100)] * WORKERS)

    assert [surprise for _, surprises in outcomes for surprise in surprises] == []
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        assert ledger.status("newcomer").monthly_used == WORKERS
        assert len(ledger.history("newcomer")) == WORKERS


@pytest.mark.slow
def test_a_worker_killed_mid_transaction_leaves_nothing_half_written(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The worker has stored the reset and the new usage, and waits to insert its entries.

    Another writer's uncommitted entry with the same key holds the worker at
    its INSERT; the worker is killed there, and the server rolls it all back.
    """
    last_month = MovableClock(system_clock() - timedelta(days=62))
    with TokenLedger.postgres(
        postgres_database.url, schema=postgres_schema, clock=last_month
    ) as old:
        old.open_account("victim", monthly_limit=100)
        old.deduct("victim", 30)
        before = (old.get_account("victim"), old.history("victim"))
    url = psycopg.conninfo.make_conninfo(postgres_database.url, application_name="tl-victim")

    with psycopg.connect(postgres_database.url) as other_writer:
        other_writer.execute(
            sql.SQL(
                "INSERT INTO {} (user_id, operation_type, amount, balance_after, idempotency_key)"
                " VALUES ('someone-else', 'deduct', 1, 0, 'request-1')"
            ).format(sql.Identifier(postgres_schema, "token_transactions"))
        )
        worker = multiprocessing.get_context("spawn").Process(
            target=workers.deduct_once, args=(url, postgres_schema, "victim", 5, "request-1")
        )
        worker.start()
        backend = wait_for_lock_wait(postgres_database, "tl-victim")
        with postgres_database.connect() as conn:
            wrote = conn.execute(
                "SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = %s", (backend,)
            ).fetchone()
        assert wrote == (True,), "the worker has written, and not committed"
        worker.kill()
        worker.join()
        other_writer.rollback()
    wait_for_backend_exit(postgres_database, backend)

    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        assert (ledger.get_account("victim"), ledger.history("victim")) == before
        ledger.deduct("victim", 5, idempotency_key="request-1")
        assert [e.operation_type for e in ledger.history("victim")] == [
            "deduct",
            "reset",
            "deduct",
        ]
