"""Threshold notifications on PostgreSQL: once per crossing under sixteen racing processes,
and committed in the order of their ids."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from notification_checks import DEFAULT_KEYS, DEFAULTS, assert_each_crossing_recorded_once
from postgres import workers
from postgres.conftest import WORKERS
from postgres.support import PATIENCE, on_every_worker, wait_for_lock_wait
from postgres_server import Database
from token_ledger import Threshold, TokenLedger

pytestmark = pytest.mark.postgres

LIMITS = {"hot": 200, "own": 200, **{f"user-{n}": 30 for n in range(8)}}


@pytest.mark.slow
def test_sixteen_processes_racing_across_thresholds_record_each_crossing_once(
    postgres_database: Database, postgres_schema: str, worker_processes: ProcessPoolExecutor
) -> None:
    """Sixteen processes deduct 1 to 5 tokens at once from accounts near and past 80 %,
    100 % and nothing left: each threshold is recorded once, by the entry that crossed it."""
    with TokenLedger.postgres(
        postgres_database.url, schema=postgres_schema, thresholds=DEFAULTS
    ) as ledger:
        for user_id, limit in LIMITS.items():
            ledger.open_account(user_id, monthly_limit=limit)
        ledger.set_thresholds("own", [Threshold(50), Threshold(90)])  # the locked path
        ledger.deduct("hot", 150)  # 75 %: the race starts just below 80 %
    rng = random.Random(16)
    asks = [
        (user_id, rng.randint(1, 5), None)
        for user_id, limit in LIMITS.items()
        for _ in range(limit if user_id != "hot" else 40)  # three times what is left
    ]
    # As many 1-token asks as each account has left: whatever order the processes run
    # in, every account then ends with nothing left (were any left, each of those asks
    # would have succeeded and spent it), so every threshold is crossed exactly once.
    asks += [
        (user_id, 1, None)
        for user_id, limit in LIMITS.items()
        for _ in range(limit if user_id != "hot" else 50)
    ]
    rng.shuffle(asks)
    plans = [asks[worker::WORKERS] for worker in range(WORKERS)]

    outcomes = on_every_worker(
        worker_processes,
        workers.in_noting_process,
        [(postgres_database.url, postgres_schema, DEFAULT_KEYS, workers.spend, p) for p in plans],
    )

    assert [surprise for _, surprises in outcomes for surprise in surprises] == []
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        assert assert_each_crossing_recorded_once(ledger, LIMITS) == 3 * 9 + 2
        assert ledger.reconcile() == []


def test_a_notification_waits_for_the_one_before_it_to_commit(
    postgres_database: Database, postgres_schema: str
) -> None:
    """Ids come from a sequence, which hands them out at INSERT: without the advisory lock a
    later id could commit first, and a reader at that id would skip the earlier one. With
    it, the second writer waits until the first has committed, so ids commit in order."""
    url = postgres_database.url
    name = "tl_second_notifier"
    with TokenLedger.postgres(url, schema=postgres_schema, thresholds=DEFAULTS) as ledger:
        ledger.open_account("first", monthly_limit=10)
        ledger.open_account("second", monthly_limit=10)
        pool = ConnectionPool(url, min_size=1, max_size=1, kwargs={"application_name": name})
        done: list[Any] = []

        def second_writer() -> None:
            with pool, TokenLedger.postgres(pool, schema=postgres_schema, thresholds=DEFAULTS) as t:
                done.append(t.deduct("second", 8))

        with psycopg.connect(url, autocommit=True) as conn:
            with conn.transaction():
                with ledger.within(conn) as tokens:
                    tokens.deduct("first", 8)  # 80 %: recorded, and the lock held until COMMIT
                    [first] = tokens.notifications()
                writer = threading.Thread(target=second_writer)
                writer.start()
                wait_for_lock_wait(postgres_database, name)  # queued behind the first
                assert ledger.notifications() == []  # neither is visible yet
            writer.join(PATIENCE)
        assert not writer.is_alive()
        assert done

        notes = ledger.notifications()
        assert [(n.user_id, n.id) for n in notes] == [("first", first.id), ("second", notes[1].id)]
        assert (notes[1].id or 0) > (first.id or 0)


def test_writes_that_record_no_notification_never_wait_for_the_lock(
    postgres_database: Database, postgres_schema: str
) -> None:
    """Only a write that records a notification takes the lock: while one is held, every
    other deduction (shortcut or locked path) goes through."""
    url = postgres_database.url
    with TokenLedger.postgres(url, schema=postgres_schema, thresholds=DEFAULTS) as ledger:
        ledger.open_account("first", monthly_limit=10)
        ledger.open_account("plain", monthly_limit=100)
        ledger.open_account("own", monthly_limit=100)
        ledger.set_thresholds("own", [Threshold(90)])
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            with ledger.within(conn) as tokens:
                tokens.deduct("first", 9)
            for user_id in ("plain", "own"):
                assert ledger.deduct(user_id, 10).monthly_remaining == 90
        assert [n.user_id for n in ledger.notifications()] == ["first"]
