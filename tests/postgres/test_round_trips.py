"""How many round trips each call makes on PostgreSQL, counted on the wire.

libpq's trace of the ledger's one connection shows every message; each round
trip ends with the server's ``ReadyForQuery``. The common deduction and the
reads are one round trip each (no ``BEGIN`` or ``COMMIT`` around a single
statement), the operator queries one statement each, the bulk reset one
statement a batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg import pq
from psycopg_pool import ConnectionPool

from postgres_server import Database
from token_ledger import TokenLedger
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

UTC = timezone.utc
JANUARY = datetime(2026, 1, 15, 12, tzinfo=UTC)


class Wire:
    """The messages the ledger's connection exchanges while :meth:`watch` is on."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.conn = pool.getconn()
        pool.putconn(self.conn)

    @contextmanager
    def watch(self) -> Iterator[list[str]]:
        messages: list[str] = []
        with tempfile.TemporaryFile("w+") as trace:
            self.conn.pgconn.trace(trace.fileno())
            self.conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                yield messages
            finally:
                self.conn.pgconn.untrace()
                trace.seek(0)
                messages += [line.split("\t")[2].split(" ")[0] for line in trace if "\t" in line]

    def round_trips(self, call: Callable[[], object]) -> int:
        with self.watch() as messages:
            call()
        return messages.count("ReadyForQuery")


@pytest.fixture
def wired(
    postgres_database: Database, postgres_schema: str
) -> Iterator[tuple[TokenLedger, Wire, MovableClock]]:
    clock = MovableClock(JANUARY)
    with ConnectionPool(postgres_database.url, min_size=1, max_size=1, open=True) as pool:
        ledger = TokenLedger.postgres(pool, schema=postgres_schema, clock=clock)
        yield ledger, Wire(pool), clock


def test_a_common_deduction_is_one_round_trip_with_a_key_or_without(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    ledger, wire, _ = wired
    ledger.open_account("u1", monthly_limit=100)

    assert wire.round_trips(lambda: ledger.deduct("u1", 5)) == 1
    assert wire.round_trips(lambda: ledger.deduct("u1", 5, idempotency_key="k1")) == 1


def test_a_deduction_the_statement_does_not_cover_takes_the_locked_path_after_it(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    """A replay: the statement (it writes nothing), then BEGIN, the lock, the key, COMMIT."""
    ledger, wire, _ = wired
    ledger.open_account("u1", monthly_limit=100)
    ledger.deduct("u1", 5, idempotency_key="k1")

    assert wire.round_trips(lambda: ledger.deduct("u1", 5, idempotency_key="k1")) == 1 + 4


def test_an_anchored_account_goes_to_the_locked_path_at_once_once_it_is_known(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    """Anchors never change: the statement, which never covers them, is tried once, and so
    is the member's (the statement's answer is the same for a member)."""
    ledger, wire, clock = wired
    ledger.open_account("u1", monthly_limit=100, reset_anchor=clock() - timedelta(days=3))
    locked_path = 5  # BEGIN, the locking SELECT, UPDATE, INSERT, COMMIT

    assert wire.round_trips(lambda: ledger.deduct("u1", 5)) == 2 + locked_path
    assert wire.round_trips(lambda: ledger.deduct("u1", 5)) == locked_path


def test_a_member_deduction_is_one_round_trip_once_the_member_is_known(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    """The first: the common statement, which says the account is a member, then the
    member's statement, which locks the organisation, then the member."""
    ledger, wire, clock = wired
    ledger.open_account("org", monthly_limit=100)
    ledger.open_account("u1", monthly_limit=100, organisation_id="org")
    clock.advance(timedelta(seconds=1))

    assert wire.round_trips(lambda: ledger.deduct("u1", 5)) == 2
    assert wire.round_trips(lambda: ledger.deduct("u1", 5, idempotency_key="k1")) == 1
    assert [ledger.status(user).monthly_used for user in ("org", "u1")] == [10, 10]
    assert len(ledger.history("org")) == 2


def test_a_member_past_a_guard_takes_the_locked_path_with_nothing_written_before(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    """An organisation with a grant, and one that became a member itself: the member's
    statement writes nothing, and the locked path writes the deduction once."""
    ledger, _, clock = wired
    ledger.open_account("root", monthly_limit=100)
    ledger.open_account("org", monthly_limit=100)
    ledger.open_account("u1", monthly_limit=100, organisation_id="org")
    ledger.open_account("u2", monthly_limit=100, organisation_id="root")
    clock.advance(timedelta(seconds=1))
    ledger.deduct("u1", 5)
    ledger.deduct("u2", 5)
    ledger.grant("org", 10)
    ledger.move_to_organisation("root", "org")  # u2's path: org, root, u2
    clock.advance(timedelta(seconds=1))

    for _ in range(2):
        ledger.deduct("u1", 5)
        ledger.deduct("u2", 5)

    used = [ledger.status(user).monthly_used for user in ("org", "root", "u1", "u2")]
    assert used == [5 + 4 * 5, 5 + 2 * 5, 15, 15]
    assert [len(ledger.history(user)) for user in ("org", "root")] == [1 + 1 + 4, 1 + 1 + 2]
    assert ledger.reconcile() == []


def test_reads_are_one_round_trip_and_an_account_with_grants_two(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    ledger, wire, _ = wired
    ledger.open_account("plain", monthly_limit=100)
    ledger.open_account("granted", monthly_limit=100)
    ledger.grant("granted", 10)
    ledger.deduct("plain", 1)

    assert wire.round_trips(lambda: ledger.status("plain")) == 1
    assert wire.round_trips(lambda: ledger.get_account("plain")) == 1
    assert wire.round_trips(lambda: ledger.history("plain")) == 1
    assert wire.round_trips(lambda: ledger.status("granted")) == 2
    assert ledger.status("granted").grant_balance == 10


def test_operator_queries_are_one_statement_whatever_the_number_of_accounts(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    """Without anchored accounts: the counts, (for alerts) the refusals, the grouped query."""
    ledger, wire, clock = wired
    for n in range(30):
        ledger.open_account(f"user-{n:02d}", monthly_limit=10)
        ledger.deduct(f"user-{n:02d}", 9)
    clock.advance(timedelta(days=40))

    assert wire.round_trips(ledger.health) == 1
    assert wire.round_trips(ledger.alerts) == 2
    assert wire.round_trips(ledger.reconcile) == 1
    assert wire.round_trips(lambda: ledger.reset_all_stale(batch_size=7)) == 30 // 7 + 1
    assert ledger.health().stale == 0
    assert ledger.reconcile() == []
