"""asyncio scenarios: PostgreSQL deductions from 8 concurrent tasks, on distinct accounts and
on one hot account.

Three sides run in alternation, round by round, in one process: ``AsyncTokenLedger`` with 8
tasks on one event loop (a pool of up to 10 connections), the synchronous ``TokenLedger`` on
8 threads (its own pool of 10), and raw async psycopg: 8 tasks, each on a connection of its
own, writing the same rows as the synchronous baseline (``baselines.RawPostgres``). Reported:
the async library against raw async psycopg (``library_raw_ratio``, the usual target) and
against the synchronous library (``async_sync_ratio``: async should not be slower).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from baselines import FEATURE, Deduction, RawPostgres, _now, plan
from harness import MIN_RATIO, Context, Outcome, Scenarios, Target
from jobs import library_deduct, postgres_ledger
from postgres_scenarios import CONNECTIONS, fresh_schema, open_accounts, require_adapter

scenarios = Scenarios()

Side = Callable[[str], float]
"""One round of one side: given a unique tag, deductions per second."""


def task_plans(user_ids: Sequence[str], count: int, tag: str) -> list[list[Deduction]]:
    """One plan per task: task ``n`` deducts ``count`` times from ``user_ids[n % len]``."""
    return [
        plan((user_ids[number % len(user_ids)],), count, f"{tag}-{number}")
        for number in range(CONNECTIONS)
    ]


async def concurrently(
    deduct: Callable[[int, Deduction], Awaitable[object]], plans: list[list[Deduction]]
) -> float:
    """Every plan in a task of its own, all at once; deductions per second of the whole."""

    async def task(number: int, deductions: list[Deduction]) -> None:
        for deduction in deductions:
            await deduct(number, deduction)

    start = time.perf_counter()
    await asyncio.gather(*(task(n, deductions) for n, deductions in enumerate(plans)))
    return sum(len(p) for p in plans) / (time.perf_counter() - start)


class RawAsyncPostgres:
    """``baselines.RawPostgres``'s deduction on an ``AsyncConnection``: the same statements."""

    def __init__(self, conn: Any, update: str, insert: str) -> None:
        from psycopg.types.json import Jsonb

        self.conn = conn
        self.update = update
        self.insert = insert
        self.jsonb = Jsonb

    @classmethod
    async def connect(cls, url: str, schema: str) -> RawAsyncPostgres:
        import psycopg

        statements = RawPostgres(url, schema)  # composes the statements; its connection goes
        statements.close()
        conn = await psycopg.AsyncConnection.connect(url)
        return cls(conn, statements.update, statements.insert)

    async def deduct(self, deduction: Deduction) -> int:
        now = _now()
        async with self.conn.transaction():
            cursor = await self.conn.execute(
                self.update, (deduction.amount, now, deduction.user_id, deduction.amount)
            )
            row = await cursor.fetchone()
            if row is None:
                raise RuntimeError(f"no tokens left for {deduction.user_id!r}")
            await self.conn.execute(
                self.insert,
                (
                    deduction.user_id,
                    deduction.amount,
                    now,
                    row[0],
                    FEATURE,
                    self.jsonb(deduction.context),
                    deduction.idempotency_key,
                ),
            )
        balance: int = row[0]
        return balance


def on_threads(deduct: Callable[[Deduction], object], plans: list[list[Deduction]]) -> float:
    """Every plan on a thread of its own, started together; deductions per second."""
    barrier = threading.Barrier(len(plans) + 1)
    spans: list[tuple[float, float]] = []
    failures: list[BaseException] = []

    def work(deductions: list[Deduction]) -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            for deduction in deductions:
                deduct(deduction)
        except BaseException as error:  # reported by the round, not lost in the thread
            failures.append(error)
        spans.append((start, time.perf_counter()))

    threads = [threading.Thread(target=work, args=(deductions,)) for deductions in plans]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    first = min(start for start, _ in spans)
    last = max(end for _, end in spans)
    return sum(len(p) for p in plans) / (last - first)


def three_ways(context: Context, url: str, schema: str, user_ids: Sequence[str]) -> Outcome:
    """The async library, the sync library on threads and raw async psycopg, alternating."""
    from token_ledger.asyncio_application import AsyncTokenLedger

    count = context.size.process_deductions
    loop = asyncio.new_event_loop()
    try:
        async_ledger = AsyncTokenLedger.postgres(url, schema=schema)
        loop.run_until_complete(async_ledger.__aenter__())
        raws = [
            loop.run_until_complete(RawAsyncPostgres.connect(url, schema))
            for _ in range(CONNECTIONS)
        ]
        with postgres_ledger(url, schema) as sync_ledger:
            sync_deduct = library_deduct(sync_ledger)

            async def library(number: int, deduction: Deduction) -> object:
                return await async_ledger.deduct(
                    deduction.user_id,
                    deduction.amount,
                    feature=FEATURE,
                    context=deduction.context,
                    idempotency_key=deduction.idempotency_key,
                )

            async def raw(number: int, deduction: Deduction) -> object:
                return await raws[number].deduct(deduction)

            sides: dict[str, Side] = {
                "async": lambda tag: loop.run_until_complete(
                    concurrently(library, task_plans(user_ids, count, tag))
                ),
                "sync": lambda tag: on_threads(sync_deduct, task_plans(user_ids, count, tag)),
                "raw": lambda tag: loop.run_until_complete(
                    concurrently(raw, task_plans(user_ids, count, tag))
                ),
            }
            rounds = alternate_all(context.size.rounds, sides)
        for connection in raws:
            loop.run_until_complete(connection.conn.close())
        loop.run_until_complete(async_ledger.close())
    finally:
        loop.close()
    return outcome(rounds)


def alternate_all(rounds: int, sides: dict[str, Side]) -> dict[str, list[float]]:
    """Each side once per round, in turn, after one warm-up round that is not counted."""
    for name, side in sides.items():
        side(f"warmup-{name}")
    measured: dict[str, list[float]] = {name: [] for name in sides}
    for number in range(rounds):
        for name, side in sides.items():
            measured[name].append(side(f"{name}-{number}"))
    return measured


def outcome(rounds: dict[str, list[float]]) -> Outcome:
    """Medians of each side; ratios are medians of the per-round ratios."""

    def ratio(first: str, second: str) -> float:
        return statistics.median(a / b for a, b in zip(rounds[first], rounds[second], strict=True))

    medians = {name: statistics.median(values) for name, values in rounds.items()}
    async_raw, async_sync = ratio("async", "raw"), ratio("async", "sync")
    return Outcome(
        metrics={
            "library_per_second": medians["async"],
            "raw_per_second": medians["raw"],
            "library_raw_ratio": async_raw,
            "sync_per_second": medians["sync"],
            "async_sync_ratio": async_sync,
        },
        library=f"{medians['async']:,.0f} /s (sync, 8 threads: {medians['sync']:,.0f} /s)",
        raw=f"{medians['raw']:,.0f} /s",
        comparison=f"{async_raw:.2f} (async/sync {async_sync:.2f})",
        targets=(
            Target(f"library/raw >= {MIN_RATIO}", async_raw >= MIN_RATIO),
            Target("async >= sync", async_sync >= 1.0),
        ),
    )


@scenarios("postgres_async_8_tasks_distinct", "PostgreSQL asyncio, 8 tasks, distinct accounts")
def postgres_async_distinct(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "async_distinct") as (url, schema):
        user_ids = [f"user-{number}" for number in range(CONNECTIONS)]
        open_accounts(url, schema, user_ids)
        return three_ways(context, url, schema, user_ids)


@scenarios("postgres_async_8_tasks_hot", "PostgreSQL asyncio, 8 tasks, one hot account")
def postgres_async_hot(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "async_hot") as (url, schema):
        open_accounts(url, schema, ["hot"])
        return three_ways(context, url, schema, ["hot"])
