"""Library against raw deductions, in this process or in worker processes that start together.

The engine-independent half of the deduction scenarios. It is its own
module so that ``multiprocessing`` can import it in a freshly spawned
interpreter without running the benchmarks.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from types import TracebackType
from typing import Literal

from baselines import (
    FEATURE,
    Deduction,
    RawPostgres,
    RawPostgresBest,
    RawPostgresMember,
    RawSQLite,
    RawSQLiteMember,
    plan,
)
from harness import (
    Context,
    Outcome,
    alternate,
    alternate_sides,
    library_against_raw,
    library_against_yardsticks,
)
from token_ledger import Threshold, TokenLedger

Side = Literal["library", "raw", "raw_best", "raw_member"]
"""Who deducts: the library, or a hand-written yardstick (:mod:`baselines`): ``raw`` for
an account of its own, ``raw_best`` its one-statement form, ``raw_member`` for a member of
an organisation."""
Engine = Literal["sqlite", "postgres"]
Deduct = Callable[[Deduction], object]

#: Longest wait for the other workers of a round; a crashed worker fails the round instead.
BARRIER_TIMEOUT = 120.0

#: Default notification thresholds of the library's ledgers, such as ``80%,100%,nothing_left``
#: (none when unset): to measure the one-statement deduction's guard with thresholds to test.
THRESHOLDS = tuple(
    Threshold.parse(key)
    for key in os.environ.get("TOKEN_LEDGER_BENCHMARK_THRESHOLDS", "").split(",")
    if key.strip()
)


def postgres_ledger(url: str, schema: str) -> TokenLedger:
    return TokenLedger.postgres(url, schema=schema, thresholds=THRESHOLDS)


def library_deduct(ledger: TokenLedger) -> Deduct:
    def deduct(deduction: Deduction) -> object:
        return ledger.deduct(
            deduction.user_id,
            deduction.amount,
            feature=FEATURE,
            context=deduction.context,
            idempotency_key=deduction.idempotency_key,
        )

    return deduct


@contextmanager
def deductor(side: Side, engine: Engine, target: str, schema: str) -> Iterator[Deduct]:
    """A function making one deduction, by the library or by the raw baseline."""
    if side == "library":
        ledger = (
            TokenLedger.sqlite(target, thresholds=THRESHOLDS)
            if engine == "sqlite"
            else postgres_ledger(target, schema)
        )
        with ledger:
            yield library_deduct(ledger)
    elif side == "raw_best":
        best = RawPostgresBest(target, schema)
        try:
            yield best.deduct
        finally:
            best.close()
    elif side == "raw_member":
        by_hand = (
            RawSQLiteMember(target) if engine == "sqlite" else RawPostgresMember(target, schema)
        )
        try:
            yield by_hand.deduct
        finally:
            by_hand.close()
    else:
        raw = RawSQLite(target) if engine == "sqlite" else RawPostgres(target, schema)
        try:
            yield raw.deduct
        finally:
            raw.close()


def throughput(deduct: Deduct, deductions: Sequence[Deduction]) -> float:
    """Deductions per second, the calls made one after the other."""
    start = time.perf_counter()
    for deduction in deductions:
        deduct(deduction)
    return len(deductions) / (time.perf_counter() - start)


@dataclass(frozen=True)
class Job:
    """One worker's share of a round: ``count`` deductions over ``user_ids``."""

    side: Side
    engine: Engine
    target: str
    schema: str
    user_ids: tuple[str, ...]
    count: int
    tag: str


_barrier: Barrier | None = None


def _remember_barrier(barrier: Barrier) -> None:
    global _barrier
    _barrier = barrier


def run_job(job: Job) -> tuple[float, float]:
    """In a worker: connect, wait for every worker, deduct; the start and end instants.

    ``time.perf_counter`` is the system-wide monotonic clock on Linux and
    macOS, so instants from different workers can be compared.
    """
    deductions = plan(job.user_ids, job.count, job.tag)
    with deductor(job.side, job.engine, job.target, job.schema) as deduct:
        assert _barrier is not None, "run_job runs in a Workers pool"
        _barrier.wait(BARRIER_TIMEOUT)
        start = time.perf_counter()
        for deduction in deductions:
            deduct(deduction)
        return start, time.perf_counter()


class Workers:
    """``processes`` spawned workers; each round, all of them start deducting at once."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes = processes
        self._pool = context.Pool(
            processes, initializer=_remember_barrier, initargs=(context.Barrier(processes),)
        )

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()

    def throughput(self, jobs: Sequence[Job]) -> float:
        """All the jobs' deductions per second, from the first start to the last end.

        There is one job per worker: each waits at the barrier, so no worker takes two.
        """
        if len(jobs) != self.processes:
            raise ValueError(f"one job per worker: {self.processes} expected, got {len(jobs)}")
        spans = self._pool.map(run_job, jobs, chunksize=1)
        first = min(start for start, _ in spans)
        last = max(end for _, end in spans)
        return sum(job.count for job in jobs) / (last - first)


def one_at_a_time(
    context: Context,
    engine: Engine,
    target: str,
    schema: str,
    user_ids: Sequence[str],
    targets: dict[str, float] | None = None,
) -> Outcome:
    """Library against raw in this process, each on its own connection, deducting in turn.

    With ``targets`` (the least library/side ratio, by side), every side they name runs
    too (``raw_best`` as well as ``raw``), round by round with the library.
    """
    count = context.size.deductions
    if targets is None:
        with (
            deductor("library", engine, target, schema) as library,
            deductor("raw", engine, target, schema) as raw,
        ):
            rounds = alternate(
                context.size.rounds,
                lambda tag: throughput(library, plan(user_ids, count, tag)),
                lambda tag: throughput(raw, plan(user_ids, count, tag)),
            )
        return library_against_raw(rounds, "/s")
    sides: list[Side] = ["library", "raw", "raw_best"]
    with ExitStack() as stack:
        deducts = {
            side: stack.enter_context(deductor(side, engine, target, schema)) for side in sides
        }

        def side_of(deduct: Deduct) -> Callable[[str], float]:
            return lambda tag: throughput(deduct, plan(user_ids, count, tag))

        measured = alternate_sides(
            context.size.rounds, {side: side_of(deduct) for side, deduct in deducts.items()}
        )
    return library_against_yardsticks(measured, "/s", targets)


def at_once(
    context: Context,
    engine: Engine,
    target: str,
    schema: str,
    user_ids: Sequence[str],
    processes: int,
    targets: dict[str, float] | None = None,
    raw: Side = "raw",
) -> Outcome:
    """Library against raw, ``processes`` workers deducting at once; worker n on one account.

    Worker ``n`` uses ``user_ids[n % len(user_ids)]``: one account each, or all on one.
    With ``targets``, as for :func:`one_at_a_time`, ``raw_best`` runs too. ``raw`` is the
    yardstick without targets: ``raw_member`` for accounts that are members of an
    organisation.
    """

    def jobs(side: Side, tag: str) -> list[Job]:
        return [
            Job(
                side,
                engine,
                target,
                schema,
                (user_ids[number % len(user_ids)],),
                context.size.process_deductions,
                f"{tag}-{number}",
            )
            for number in range(processes)
        ]

    with Workers(processes) as workers:
        if targets is None:
            rounds = alternate(
                context.size.rounds,
                lambda tag: workers.throughput(jobs("library", tag)),
                lambda tag: workers.throughput(jobs(raw, tag)),
            )
            return library_against_raw(rounds, "/s")
        sides: list[Side] = ["library", "raw", "raw_best"]

        def side_of(side: Side) -> Callable[[str], float]:
            return lambda tag: workers.throughput(jobs(side, tag))

        measured = alternate_sides(context.size.rounds, {side: side_of(side) for side in sides})
    return library_against_yardsticks(measured, "/s", targets)
