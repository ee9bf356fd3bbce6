"""The SQL and the library agree: the same operations end in the same rows and entries.

Random sequences of accounts, deductions, limit changes, resets and clock
moves across month ends are applied once through ``TokenLedger`` and once
through SQL alone (:mod:`sql.worlds`). After every operation both databases
hold identical ``user_tokens`` rows and identical ``token_transactions``
sequences, and both views show every account as ``TokenLedger.status`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from postgres_server import Database
from sql.support import connect_to, installed_schema
from sql.worlds import LibraryWorld, PostgresSQLWorld, SQLiteSQLWorld, World
from token_ledger import (
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    ReservationClosed,
    TokenLedger,
    TransactionNotFound,
    install_sqlite_sql,
)
from token_ledger import operations as ledger_operations
from token_ledger.sqlite import parse_instant
from token_ledger.testing import MovableClock

UTC = timezone.utc
START = datetime(2026, 1, 28, 12, tzinfo=UTC)
USERS = ("u1", "u2", "u3")
TABLES = ("user_tokens", "token_transactions", "token_grants", "token_reservations")

users = st.sampled_from(USERS)
moves = st.sampled_from(
    [
        timedelta(minutes=-30),
        timedelta(minutes=7),
        timedelta(hours=5),
        timedelta(days=2),
        timedelta(days=11),
        timedelta(days=40),
        "last microsecond of the month",
        "first microsecond of the next month",
        "first microsecond of the next month",
    ]
)


def operations(*, anchors: bool, keys: bool) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Two accounts opened at the start, then a mix weighted towards spending and time."""
    anchor_offsets = st.none()
    if anchors:
        anchor_offsets = anchor_offsets | st.timedeltas(timedelta(days=-45), timedelta(days=45))
    opening = st.tuples(st.just("open"), users, st.integers(1, 100), anchor_offsets)
    deduction = st.tuples(
        st.just("deduct"),
        users,
        st.integers(1, 60),
        st.sampled_from([None, "chat"]),
        st.sampled_from([None, "k1", "k2"]) if keys else st.none(),
    )
    by_kind = {
        "open": opening,
        "deduct": deduction,
        "set_limit": st.tuples(
            st.just("set_limit"), users, st.integers(1, 120), st.integers(0, 30)
        ),
        "move": st.tuples(st.just("move"), moves),
        "reset_one": st.tuples(st.just("reset_one"), users),
        "reset_all": st.tuples(st.just("reset_all")),
    }
    weighted = ["deduct"] * 4 + ["move"] * 3 + ["set_limit", "open", "reset_one", "reset_all"]
    operation = st.sampled_from(weighted).flatmap(by_kind.__getitem__)
    first = st.tuples(
        st.tuples(st.just("open"), st.just("u1"), st.integers(1, 100), anchor_offsets),
        st.tuples(st.just("open"), st.just("u2"), st.integers(1, 100), anchor_offsets),
    )
    return st.builds(
        lambda start, rest: [*start, *rest],
        first,
        st.lists(operation, min_size=10, max_size=30),
    )


def moved(now: datetime, move: timedelta | str) -> datetime:
    if isinstance(move, timedelta):
        return now + move
    year, month = divmod(now.year * 12 + now.month, 12)
    next_month = datetime(year, month + 1, 1, tzinfo=UTC)
    return next_month - timedelta(microseconds=1) if move.startswith("last") else next_month


@dataclass
class Engine:
    """Two fresh databases with the SQL installed, the library on one and SQL on the other."""

    library: LibraryWorld
    sql: World
    rows: Callable[[str], tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]
    view: Callable[[datetime], tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]]
    sql_ledger: TokenLedger  # the library, opened on the SQL world's database


def apply(engine: Engine, ops: list[tuple[Any, ...]]) -> None:
    now = START
    opened: set[str] = set()
    for op in ops:
        kind, *args = op
        if kind == "move":
            now = moved(now, args[0])
            continue
        if kind == "open":
            user_id, limit, anchor_offset = args
            if user_id in opened:
                continue
            opened.add(user_id)
            args = [user_id, limit, None if anchor_offset is None else now + anchor_offset]
        elif kind != "reset_all" and args[0] not in opened:
            continue
        for world in (engine.library, engine.sql):
            getattr(world, kind)(*args, now)
        event(kind)
        assert_same(engine, now, op)
    resets = engine.rows("token_transactions")[0]
    event(f"{sum(1 for row in resets if row[2] == 'reset')} reset entries")


def assert_same(engine: Engine, now: datetime, op: tuple[Any, ...]) -> None:
    for table in TABLES:
        library_rows, sql_rows = engine.rows(table)
        assert sql_rows == library_rows, (op, table)
    engine.library.clock.set(now)
    library_view, sql_view = engine.view(now)
    statuses = {}
    for user_id in library_view:
        status = engine.library.ledger.status(user_id)
        statuses[user_id] = (
            status.monthly_used,
            status.monthly_limit,
            status.period_start,
            status.overage_limit,
            status.grant_balance,
            status.reserved,
        )
    assert library_view == statuses, op
    assert sql_view == statuses, op


@pytest.fixture
def postgres_engine(
    postgres_database: Database, request: pytest.FixtureRequest
) -> Iterator[Callable[[], Engine]]:
    """Fresh contents for every example; the schemas are made once per test."""
    library_schema = installed_schema(postgres_database, request)
    sql_schema = installed_schema(postgres_database, request)
    clock = MovableClock(START)
    with ExitStack() as stack:
        library_conn = stack.enter_context(connect_to(postgres_database, library_schema))
        sql_conn = stack.enter_context(connect_to(postgres_database, sql_schema))
        ledger = stack.enter_context(
            TokenLedger.postgres(postgres_database.url, schema=library_schema, clock=clock)
        )
        sql_ledger = stack.enter_context(
            TokenLedger.postgres(postgres_database.url, schema=sql_schema, clock=clock)
        )

        def rows(table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            query = f"SELECT * FROM {table} ORDER BY 1"
            return (
                library_conn.execute(query).fetchall(),
                sql_conn.execute(query).fetchall(),
            )

        def view(now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
            query = (
                "SELECT user_id, monthly_tokens_used, monthly_limit, last_monthly_reset,"
                " overage_limit, grant_balance, reserved_tokens"
                " FROM user_tokens_with_auto_reset_at(%s)"
            )
            return (
                {row[0]: row[1:] for row in library_conn.execute(query, (now,))},
                {row[0]: row[1:] for row in sql_conn.execute(query, (now,))},
            )

        def fresh() -> Engine:
            for conn in (library_conn, sql_conn):
                conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
            return Engine(
                LibraryWorld(ledger, clock), PostgresSQLWorld(sql_conn), rows, view, sql_ledger
            )

        yield fresh


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    clock = MovableClock(START)
    with ExitStack() as stack:
        ledger = stack.enter_context(TokenLedger.sqlite(tmp_path / "library.db", clock=clock))
        sql_ledger = stack.enter_context(TokenLedger.sqlite(tmp_path / "sql.db", clock=clock))
        library_conn = ledger.repository.db.conn  # type: ignore[attr-defined]
        sql_conn = sql_ledger.repository.db.conn  # type: ignore[attr-defined]
        for conn in (library_conn, sql_conn):
            install_sqlite_sql(conn)
        library_sql = SQLiteSQLWorld(library_conn)  # to point the library's view at an instant

        def rows(table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            query = f"SELECT * FROM {table} ORDER BY 1"
            return (
                library_conn.execute(query).fetchall(),
                sql_conn.execute(query).fetchall(),
            )

        def view(now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
            query = (
                "SELECT user_id, monthly_tokens_used, monthly_limit, last_monthly_reset,"
                " overage_limit, grant_balance, reserved_tokens FROM user_tokens_with_auto_reset"
            )
            found = []
            for world in (library_sql, sql_world):
                world.at(now)
                found.append(
                    {
                        row[0]: (*row[1:3], parse_instant(row[3]), *row[4:])
                        for row in world.conn.execute(query)
                    }
                )
            return found[0], found[1]

        sql_world = SQLiteSQLWorld(sql_conn)

        def fresh() -> Engine:
            for conn in (library_conn, sql_conn):
                conn.executescript("".join(f"DELETE FROM {table};" for table in TABLES))
            return Engine(LibraryWorld(ledger, clock), sql_world, rows, view, sql_ledger)

        yield fresh


# Every kind of operation across two month ends, a clock stepped back, a frozen
# clock, and the last microsecond of a month.
ACROSS_MONTH_ENDS = [
    ("open", "u1", 50, None),
    ("open", "u2", 10, None),
    ("deduct", "u1", 30, "chat", None),
    ("deduct", "u2", 10, None, None),
    ("move", "last microsecond of the month"),
    ("deduct", "u1", 20, None, None),
    ("set_limit", "u1", 60, 5),
    ("set_limit", "u1", 60, 5),
    ("deduct", "u1", 40, None, None),
    ("move", "first microsecond of the next month"),
    ("deduct", "u1", 70, None, None),
    ("move", timedelta(minutes=-30)),
    ("deduct", "u1", 6, None, None),
    ("reset_one", "u2"),
    ("move", timedelta(days=40)),
    ("open", "u3", 5, None),
    ("set_limit", "u2", 4, 0),
    ("reset_all",),
    ("deduct", "u3", 5, None, None),
    ("deduct", "u1", 66, None, None),
]
# The fixtures make the databases once per test; each example empties them.
FIXTURES_PER_TEST = [HealthCheck.function_scoped_fixture]


@pytest.mark.postgres
@settings(max_examples=40, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=operations(anchors=True, keys=True))
@example(ops=ACROSS_MONTH_ENDS)
@example(
    ops=[
        ("open", "u1", 50, timedelta(days=3, hours=2)),  # an anniversary on the 31st
        ("deduct", "u1", 50, None, "k1"),
        ("deduct", "u1", 50, None, "k1"),  # a replay
        ("deduct", "u1", 1, None, "k1"),  # a conflict
        ("move", timedelta(days=11)),
        ("deduct", "u1", 1, None, "k2"),
        ("move", timedelta(days=40)),
        ("deduct", "u1", 60, None, "k2"),  # another conflict, with a reset pending
        ("reset_all",),
        ("reset_one", "u1"),
    ]
)
def test_postgres_functions_and_triggers_write_what_the_library_writes(
    postgres_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = postgres_engine()
    apply(engine, ops)
    assert engine.sql_ledger.reconcile() == []


@settings(max_examples=60, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=operations(anchors=False, keys=False))
@example(ops=ACROSS_MONTH_ENDS)
def test_sqlite_view_and_triggers_write_what_the_library_writes(
    sqlite_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = sqlite_engine()
    apply(engine, ops)
    assert engine.sql_ledger.reconcile() == []


def credit_operations() -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Grants, holds, refunds and overage around SQL deductions and resets.

    The SQL has no functions for grants, holds and refunds: both worlds make
    them through the library, with the same ids, and deduct and reset through
    their own means.
    """
    two_users = st.sampled_from(("u1", "u2"))
    by_kind = {
        "deduct": st.tuples(
            st.just("deduct"),
            two_users,
            st.integers(1, 80),
            st.sampled_from([None, "chat"]),
            st.none(),
        ),
        "grant": st.tuples(
            st.just("grant"), two_users, st.integers(1, 60), st.none() | st.integers(1, 45)
        ),
        "reserve": st.tuples(
            st.just("reserve"), two_users, st.integers(1, 60), st.integers(1, 900)
        ),
        "commit": st.tuples(st.just("commit"), st.integers(0, 5), st.integers(0, 100)),
        "release": st.tuples(st.just("release"), st.integers(0, 5)),
        "refund": st.tuples(st.just("refund"), st.integers(1, 40), st.none() | st.integers(1, 60)),
        "overage": st.tuples(st.just("overage"), two_users, st.integers(0, 40)),
        "move": st.tuples(st.just("move"), moves),
        "reset_one": st.tuples(st.just("reset_one"), two_users),
        "reset_all": st.tuples(st.just("reset_all")),
    }
    weighted = (
        ["deduct"] * 4
        + ["grant", "reserve"] * 2
        + ["move"] * 3
        + [
            "commit",
            "release",
            "refund",
            "overage",
            "reset_one",
            "reset_all",
        ]
    )
    opening = [("open", "u1", 50, None), ("open", "u2", 20, None)]
    return st.lists(
        st.sampled_from(weighted).flatmap(by_kind.__getitem__), min_size=10, max_size=30
    ).map(lambda ops: [*opening, *ops])


REFUSALS = (
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    ReservationClosed,
    TransactionNotFound,
)


def credit_call(
    ledger: TokenLedger, kind: str, args: list[Any], now: datetime, holds: list[str]
) -> object:
    """One library call; its result, or the kind of refusal."""
    try:
        if kind == "grant":
            user_id, amount, days = args
            expires_at = None if days is None else now + timedelta(days=days)
            return ledger.grant(user_id, amount, expires_at=expires_at).reference
        if kind == "reserve":
            user_id, amount, minutes = args
            return ledger.reserve(user_id, amount, ttl=timedelta(minutes=minutes)).id
        if kind == "commit":
            index, percent = args
            hold = holds[index % len(holds)]
            reserved = ledger.history(reference=hold, operation_type="reserve")[0].amount
            return ledger.commit(hold, reserved * percent // 100).transaction.id
        if kind == "release":
            return ledger.release(holds[args[0] % len(holds)]).transaction.id
        if kind == "refund":
            return ledger.refund(*args).id
        user_id, overage = args
        return ledger.set_limit(user_id, overage_limit=overage).overage_limit
    except REFUSALS as refused:
        return type(refused).__name__


def numbered_ids(prefix: str) -> Callable[[], str]:
    """Ids for what the library creates, the same in both worlds."""
    numbers = itertools.count()
    return lambda: f"{prefix}-{next(numbers)}"


@pytest.mark.postgres
@settings(max_examples=30, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=credit_operations())
@example(
    ops=[
        ("open", "u1", 50, None),
        ("open", "u2", 20, None),
        ("grant", "u1", 10, None),
        ("grant", "u1", 10, 5),
        ("grant", "u1", 10, 2),
        ("overage", "u1", 15),
        ("reserve", "u1", 5, 60),
        ("deduct", "u1", 75, "chat", None),  # the allowance, then grants by expiry
        ("deduct", "u1", 14, None, None),  # the grant that never expires, then overage
        ("move", timedelta(hours=5)),
        ("deduct", "u1", 2, None, None),  # the expired hold is released first
        ("grant", "u2", 30, 1),
        ("move", timedelta(days=2)),
        ("move", "first microsecond of the next month"),
        ("reset_all",),  # u2's reset and its expired grant, in one statement
        ("deduct", "u1", 60, None, None),
    ]
)
def test_postgres_deductions_spend_grants_overage_and_holds_as_the_library_does(
    postgres_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = postgres_engine()
    now = START
    holds: list[str] = []
    for step, op in enumerate(ops):
        kind, *args = op
        if kind == "move":
            now = moved(now, args[0])
            continue
        if kind in ("open", "deduct", "reset_one", "reset_all"):
            for world in (engine.library, engine.sql):
                getattr(world, kind)(*args, now)
        elif kind in ("commit", "release") and not holds:
            continue
        else:
            results = []
            for ledger in (engine.library.ledger, engine.sql_ledger):
                engine.library.clock.set(now)
                with patch.object(ledger_operations, "new_id", numbered_ids(f"{step:02d}")):
                    results.append(credit_call(ledger, kind, args, now, holds))
            assert results[0] == results[1], op
            if kind == "reserve" and isinstance(results[0], str) and results[0][0].isdigit():
                holds.append(results[0])
        event(kind)
        assert_same(engine, now, op)
    assert engine.sql_ledger.reconcile() == []
    for entry in engine.sql_ledger.history(limit=1000):
        if entry.operation_type in ("expire", "release") or entry.effects.grants:
            event(f"{entry.operation_type}{' of grants' if entry.effects.grants else ''}")
