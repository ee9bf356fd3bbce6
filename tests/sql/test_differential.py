"""The SQL and the library agree: the same operations end in the same rows and entries.

Random sequences of accounts, deductions, limit changes, resets and clock
moves across month ends are applied once through ``TokenLedger`` and once
through SQL alone (:mod:`sql.worlds`). Accounts have random time zones of
their own, anchors and rollover caps; grants have random priorities, and some
are voided. After every operation both databases hold identical
``user_tokens`` rows and identical ``token_transactions`` sequences (rollover
grants included), and both views show every account as
``TokenLedger.status`` does; on SQLite, which leaves accounts with a zone or a
rollover cap to the library, the views show those as stored, and plain
rewrites of them change nothing.

With organisations, accounts join and leave an organisation account and get
window caps, through the library in both worlds. The SQL resets members and
organisations each on its own, and spends from an organisation's own budget;
PostgreSQL's ``deduct_tokens`` refuses members and accounts with windows (the
world checks its error and that nothing was written, then spends through the
library, which charges the organisation too), and SQLite's plain statements
leave them to the library. The SQL never starts a window again; the library
does on every write, lazily: a window that has ended reads as nothing used. So
the rows of accounts with windows are compared as the library reads them,
their windows as they run at the instant, and those of accounts that have had
windows without ``updated_at`` (the library stamps a write that only starts a
window again, where the SQL writes nothing, and a later write at the same
instant stamps a microsecond earlier than the stored stamp); every other
column, and every entry, must be the same. Such examples
keep the clock from going back: a library that started a window again at a
later instant keeps that window on a clock moved back before it, which the
stored, earlier window cannot show.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest.mock import patch
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from psycopg import errors

from postgres_server import Database
from sql.support import connect_to, installed_schema
from sql.worlds import LibraryWorld, PostgresSQLWorld, SQLiteSQLWorld, World
from token_ledger import (
    GrantVoided,
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
from token_ledger.windows import WINDOW_UNITS, decode, encode, roll

UTC = timezone.utc
START = datetime(2026, 1, 28, 12, tzinfo=UTC)
USERS = ("u1", "u2", "u3")
ORG = "org"  # the organisation account of the examples with organisations
TABLES = ("user_tokens", "token_transactions", "token_grants", "token_reservations")
# Accounts' own zones: a day ahead of UTC, behind it, and 45 minutes off the hour.
ZONES = ("Pacific/Auckland", "America/Los_Angeles", "Asia/Kathmandu")

users = st.sampled_from(USERS)
zones = st.none() | st.sampled_from(ZONES)
caps = st.just(0) | st.integers(1, 60)
BACK = timedelta(minutes=-30)
window_caps = st.none() | st.dictionaries(
    st.sampled_from(WINDOW_UNITS), st.integers(5, 60), min_size=1, max_size=3
)
forward_moves = st.sampled_from(
    [
        timedelta(minutes=7),
        timedelta(hours=5),
        timedelta(days=2),
        timedelta(days=11),
        timedelta(days=40),
        "last microsecond of the month",
        "first microsecond of the next month",
        "first microsecond of the next month",
        *(("last", zone) for zone in ZONES),
        *(("first", zone) for zone in ZONES),
    ]
)
moves = st.just(BACK) | forward_moves


def operations(
    *,
    anchors: bool,
    keys: bool,
    zones_and_caps: bool = False,
    touches: bool = False,
    organisations: bool = False,
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Two accounts opened at the start, then a mix weighted towards spending and time.

    With ``zones_and_caps``, accounts open with a random zone of their own and
    rollover cap, and caps change; ``touches`` rewrites the rows the SQL leaves
    to the library. With ``organisations``, the organisation account :data:`ORG`
    opens at the start too, with u1 as its member, the users join and leave it,
    any account gets window caps, and the clock never goes back.
    """
    anchor_offsets = st.none()
    if anchors:
        anchor_offsets = anchor_offsets | st.timedeltas(timedelta(days=-45), timedelta(days=45))
    account_zones = zones if zones_and_caps else st.none()
    account_caps = caps if zones_and_caps else st.just(0)

    def opening_of(user: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[Any, ...]]:
        return st.tuples(
            st.just("open"), user, st.integers(1, 100), anchor_offsets, account_zones, account_caps
        )

    accounts = st.sampled_from((*USERS, ORG)) if organisations else users
    opening = opening_of(users)
    deduction = st.tuples(
        st.just("deduct"),
        accounts,
        st.integers(1, 60),
        st.sampled_from([None, "chat"]),
        st.sampled_from([None, "k1", "k2"]) if keys else st.none(),
    )
    by_kind = {
        "open": opening,
        "deduct": deduction,
        "set_limit": st.tuples(
            st.just("set_limit"), accounts, st.integers(1, 120), st.integers(0, 30)
        ),
        "move": st.tuples(st.just("move"), forward_moves if organisations else moves),
        "reset_one": st.tuples(st.just("reset_one"), accounts),
        "reset_all": st.tuples(st.just("reset_all")),
        "set_cap": st.tuples(st.just("set_cap"), accounts, caps),
        "touch": st.tuples(st.just("touch")),
        "join": st.tuples(st.just("join"), users, st.sampled_from([ORG, None])),
        "cap_windows": st.tuples(st.just("cap_windows"), accounts, window_caps),
    }
    weighted = ["deduct"] * 4 + ["move"] * 3 + ["set_limit", "open", "reset_one", "reset_all"]
    weighted += ["set_cap"] * zones_and_caps + ["touch"] * touches
    weighted += ["join", "join", "cap_windows"] * organisations
    operation = st.sampled_from(weighted).flatmap(by_kind.__getitem__)
    first = [opening_of(st.just("u1")), opening_of(st.just("u2"))]
    if organisations:  # u1 a member from the start, u2 perhaps with windows
        first.append(opening_of(st.just(ORG)))
        first.append(st.just(("join", "u1", ORG)))
        first.append(st.tuples(st.just("cap_windows"), st.just("u2"), window_caps))
    return st.builds(
        lambda start, rest: [*start, *rest],
        st.tuples(*first),
        st.lists(operation, min_size=10, max_size=30),
    )


def moved(now: datetime, move: timedelta | str | tuple[str, str]) -> datetime:
    """``now`` moved by a duration, or to the edge of the next month: in UTC (a text) or,
    as ``("first" | "last", zone)``, in a zone."""
    if isinstance(move, timedelta):
        return now + move
    edge, zone = (move, "UTC") if isinstance(move, str) else move
    local = now.astimezone(ZoneInfo(zone))
    year, month = divmod(local.year * 12 + local.month, 12)
    next_month = datetime(year, month + 1, 1, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return next_month - timedelta(microseconds=1) if edge.startswith("last") else next_month


@dataclass
class Engine:
    """Two fresh databases with the SQL installed, the library on one and SQL on the other."""

    library: LibraryWorld
    sql: World
    rows: Callable[[str, datetime, set[str]], tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]
    """Both worlds' rows of a table, ordered, as the library reads them at the instant
    (:func:`as_read`), given the accounts that have had windows."""
    view: Callable[[datetime], tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]]
    sql_ledger: TokenLedger  # the library, opened on the SQL world's database
    left_to_the_library: Callable[[str], bool] = lambda user_id: False
    """Accounts the SQL's view shows as stored rather than as ``status`` does."""
    windowed: set[str] = field(default_factory=set)
    """The accounts that have had window caps in the example."""


def apply(engine: Engine, ops: list[tuple[Any, ...]]) -> None:
    now = START
    opened: set[str] = set()
    for op in ops:
        kind, *args = op
        if kind == "move":
            now = moved(now, args[0])
            continue
        if kind == "open":
            user_id, limit, anchor_offset, zone, cap = (*args, None, 0)[:5]
            if user_id in opened:
                continue
            opened.add(user_id)
            args = [user_id, limit, None if anchor_offset is None else now + anchor_offset]
            args += [zone, cap]
        elif kind not in ("reset_all", "touch") and not opened.issuperset(
            arg for arg in args[:2] if arg in (*USERS, ORG)
        ):
            continue  # an account, or the organisation it would join, is not opened yet
        if kind == "cap_windows" and args[1]:
            engine.windowed.add(args[0])
        for world in (engine.library, engine.sql):
            getattr(world, kind)(*args, now)
        event(kind)
        assert_same(engine, now, op)
    entries = engine.rows("token_transactions", now, engine.windowed)[0]
    resets = [row for row in entries if row[2] == "reset"]
    event(f"{len(resets)} reset entries")
    event(f"{sum(1 for row in resets if 'rollover' in row[5])} rolling over")


def assert_same(engine: Engine, now: datetime, op: tuple[Any, ...]) -> None:
    for table in TABLES:
        library_rows, sql_rows = engine.rows(table, now, engine.windowed)
        assert sql_rows == library_rows, (op, table)
    engine.library.clock.set(now)
    library_view, sql_view = engine.view(now)
    statuses = {}
    for user_id in library_view:
        if engine.left_to_the_library(user_id):
            statuses[user_id] = as_stored(engine.library.ledger, user_id, now)
            continue
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


def as_stored(ledger: TokenLedger, user_id: str, now: datetime) -> tuple[Any, ...]:
    """What a view that leaves the account to the library shows: its stored usage and
    period, with grants and holds past their expiry no longer counted."""
    account = ledger.get_account(user_id)
    return (
        account.monthly_tokens_used,
        account.monthly_limit,
        account.last_monthly_reset,
        account.overage_limit,
        sum(grant.remaining for grant in account.grants if grant.is_live(now)),
        sum(hold.amount for hold in account.holds if hold.is_held(now)),
    )


def as_read(cursor: Any, now: datetime, windowed: set[str]) -> list[tuple[Any, ...]]:
    """A query's rows; in those of ``user_tokens``, windows as they run at ``now`` (in the
    account's zone, else the ledger's, UTC here), and no ``updated_at`` for the accounts
    that have had windows (``windowed``)."""
    rows: list[tuple[Any, ...]] = [tuple(row) for row in cursor.fetchall()]
    names = [column[0] for column in cursor.description]
    if "spending_windows" not in names:
        return rows
    windows, stamp, zone = (
        names.index(name) for name in ("spending_windows", "updated_at", "time_zone")
    )
    read = []
    for row in rows:
        if row[windows] is not None:
            as_it_runs = encode(roll(decode(row[windows]), now, row[zone] or "UTC"))
            row = (*row[:windows], as_it_runs, *row[windows + 1 :])
        if row[0] in windowed:
            row = (*row[:stamp], None, *row[stamp + 1 :])
        read.append(row)
    return read


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

        def rows(
            table: str, now: datetime, windowed: set[str]
        ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            query = f"SELECT * FROM {table} ORDER BY 1"
            return (
                as_read(library_conn.execute(query), now, windowed),
                as_read(sql_conn.execute(query), now, windowed),
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
                LibraryWorld(ledger, clock),
                PostgresSQLWorld(sql_conn, LibraryWorld(sql_ledger, clock)),
                rows,
                view,
                sql_ledger,
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
        library_world = LibraryWorld(ledger, clock)

        def rows(
            table: str, now: datetime, windowed: set[str]
        ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            query = f"SELECT * FROM {table} ORDER BY 1"
            return (
                as_read(library_conn.execute(query), now, windowed),
                as_read(sql_conn.execute(query), now, windowed),
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

        sql_world = SQLiteSQLWorld(sql_conn, LibraryWorld(sql_ledger, clock))

        def fresh() -> Engine:
            for conn in (library_conn, sql_conn):
                conn.executescript("".join(f"DELETE FROM {table};" for table in TABLES))
            return Engine(
                library_world, sql_world, rows, view, sql_ledger, sql_world.left_to_the_library
            )

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


# Zones of their own and rollover, through SQL alone: deduct_tokens resets Auckland's
# account at its own month end, a change of cap is written over a pending reset (the
# trigger rolls over by the stored cap), skipped months roll over a whole allowance.
ZONES_AND_ROLLOVER = [
    ("open", "u1", 50, None, "Pacific/Auckland", 20),
    ("open", "u2", 30, None, None, 100),
    ("open", "u3", 40, timedelta(days=3), "Asia/Kathmandu", 15),
    ("deduct", "u1", 45, None, None),
    ("deduct", "u2", 10, None, None),
    ("move", ("first", "Pacific/Auckland")),
    ("deduct", "u1", 60, None, None),  # the reset rolls 5 over, spent after the allowance
    ("move", ("last", "America/Los_Angeles")),
    ("set_cap", "u2", 5),  # 20 of January roll over, by the stored cap
    ("deduct", "u2", 35, "chat", None),
    ("move", timedelta(days=40)),
    ("move", ("first", "Asia/Kathmandu")),
    ("reset_all",),  # whole allowances up to each cap, in one statement
    ("deduct", "u3", 50, None, None),
    ("move", timedelta(days=11)),
    ("reset_one", "u1"),
    ("set_limit", "u1", 80, 10),
]

# The same on SQLite, without the anchor its SQL world has no use for, and with the
# rows it leaves to the library rewritten as they are after every move.
SQLITE_ZONES_AND_ROLLOVER = [
    ("open", "u3", 40, None, "Asia/Kathmandu", 15) if op[:2] == ("open", "u3") else op
    for op in ZONES_AND_ROLLOVER
]
for index in reversed(range(len(SQLITE_ZONES_AND_ROLLOVER))):
    if SQLITE_ZONES_AND_ROLLOVER[index][0] == "move":
        SQLITE_ZONES_AND_ROLLOVER.insert(index + 1, ("touch",))


@pytest.mark.postgres
@settings(max_examples=40, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=operations(anchors=True, keys=True, zones_and_caps=True))
@example(ops=ACROSS_MONTH_ENDS)
@example(ops=ZONES_AND_ROLLOVER)
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
@given(ops=operations(anchors=False, keys=False, zones_and_caps=True, touches=True))
@example(ops=ACROSS_MONTH_ENDS)
@example(ops=SQLITE_ZONES_AND_ROLLOVER)
def test_sqlite_view_and_triggers_write_what_the_library_writes(
    sqlite_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = sqlite_engine()
    apply(engine, ops)
    assert engine.sql_ledger.reconcile() == []


# A member spends from its organisation's budget too, an organisation from its own, an
# account with windows within them; each budget resets on its own, and a week that runs
# across the month's end keeps its use after the reset (2026-01-28 is a Wednesday).
ORGANISATIONS_AND_WINDOWS = [
    ("open", "u1", 50, None, None, 0),
    ("open", "u2", 30, None, None, 0),
    ("open", ORG, 100, None, None, 0),
    ("join", "u1", ORG),
    ("deduct", "u1", 20, "chat", None),  # the organisation pays 20 too
    ("deduct", ORG, 30, None, None),  # its own budget
    ("cap_windows", "u2", {"hour": 10, "week": 25}),
    ("deduct", "u2", 8, None, None),
    ("move", timedelta(hours=5)),
    ("deduct", "u2", 9, None, None),
    ("move", timedelta(hours=5)),
    ("reset_one", "u2"),  # nothing to reset; the library starts the hour again
    ("move", "first microsecond of the next month"),
    ("set_limit", "u1", 60, 0),  # the member's reset, not its organisation's
    ("reset_all",),  # the organisation's, and u2's, whose week keeps its 17
    ("deduct", "u2", 9, None, None),  # the week has 8 left: refused
    ("deduct", "u1", 45, None, None),
    ("deduct", "u1", 20, None, None),  # the member's own budget refuses
    ("cap_windows", ORG, {"day": 20}),
    ("deduct", "u1", 10, None, None),  # 10 of the organisation's day too
    ("deduct", ORG, 15, None, None),  # its day has 10 left: refused
    ("join", "u1", None),
    ("deduct", "u1", 1, None, None),  # a plain account again
    ("open", "u3", 40, None, None, 0),
    ("join", "u3", ORG),
    ("move", timedelta(days=2)),
    ("deduct", "u3", 15, None, None),
    ("deduct", "u3", 10, None, None),  # the organisation's day has 5 left: refused
    ("reset_one", ORG),
]


@pytest.mark.postgres
@settings(max_examples=40, suppress_health_check=FIXTURES_PER_TEST)
@given(
    ops=operations(anchors=True, keys=True, zones_and_caps=True, organisations=True),
)
@example(ops=ORGANISATIONS_AND_WINDOWS)
@example(
    ops=[
        ("open", "u1", 50, None),
        ("open", "u2", 30, None),
        ("open", ORG, 100, None),
        ("join", "u1", ORG),
        ("deduct", "u1", 20, None, "k1"),  # refused by SQL, spent by the library
        ("deduct", "u1", 20, None, "k1"),  # a replay: SQL answers it, writing nothing
        ("deduct", ORG, 20, None, "k1"),  # the member's key, not the organisation's: 23505
        ("deduct", ORG, 5, None, "k2"),
        ("move", timedelta(days=40)),
        ("deduct", "u1", 1, None, "k2"),  # the organisation's key: 23505, no reset written
        ("join", "u2", ORG),
        ("deduct", "u2", 1, None, "k3"),  # refused, nothing written, not even the reset
        ("reset_all",),
    ]
)
def test_postgres_sql_covers_organisations_and_refuses_members_and_windows(
    postgres_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = postgres_engine()
    apply(engine, ops)
    assert engine.sql_ledger.reconcile() == []
    assert isinstance(engine.sql, PostgresSQLWorld)
    event(f"refusals by deduct_tokens: {engine.sql.refusals}")


@settings(max_examples=60, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=operations(anchors=False, keys=False, zones_and_caps=True, organisations=True))
@example(ops=ORGANISATIONS_AND_WINDOWS)
def test_sqlite_triggers_reset_members_organisations_and_windowed_accounts_as_the_library(
    sqlite_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = sqlite_engine()
    apply(engine, ops)
    assert engine.sql_ledger.reconcile() == []


COVERAGE = [
    ("plain", None),
    ("root", None),  # an organisation, with members below it
    ("org", "it is a member of organisation root"),  # an organisation inside another
    ("member", "it is a member of organisation org"),
    ("windowed", "it has spending windows"),
    ("windowed-root", "it has spending windows"),  # an organisation with windows
]


@pytest.mark.postgres
@pytest.mark.parametrize(("user_id", "refusal"), COVERAGE)
def test_which_accounts_deduct_tokens_covers(
    postgres_engine: Callable[[], Engine], user_id: str, refusal: str | None
) -> None:
    """The same ledger in two schemas, a month after its last write; one deduction through
    the library in one, through ``deduct_tokens`` in the other. A plain account and an
    organisation's own budget: the same rows. A member (of an organisation at the root or
    inside another) and an account with windows: refused, with 0A000 and a hint to deduct
    through the library, and nothing written, not even the reset due; the library spends
    from them, and charges every organisation above a member, each with a share entry
    whose member_entry_id is the member's entry."""
    engine = postgres_engine()
    clock = engine.library.clock
    assert isinstance(engine.sql, PostgresSQLWorld)
    for ledger in (engine.library.ledger, engine.sql_ledger):
        clock.set(START)
        ledger.open_account("plain", monthly_limit=100)
        ledger.open_account("root", monthly_limit=500)
        ledger.open_account("org", monthly_limit=300, organisation_id="root")
        ledger.open_account("member", monthly_limit=100, organisation_id="org")
        ledger.open_account("windowed", monthly_limit=100, window_caps={"day": 50})
        ledger.open_account("windowed-root", monthly_limit=400, window_caps={"week": 300})
        ledger.open_account("its-member", monthly_limit=100, organisation_id="windowed-root")
        for spender in ("member", "its-member", "plain", "windowed"):
            ledger.deduct(spender, 10)
    now = START + timedelta(days=40)
    clock.set(now)
    before = engine.sql.contents()

    spent = engine.library.ledger.deduct(user_id, 7, feature="chat").transaction
    call = "SELECT * FROM deduct_tokens(%s, 7, 'chat', NULL, NULL, %s)"
    if refusal is None:
        engine.sql.conn.execute(call, (user_id, now))
        for table in (*TABLES, "token_notifications"):
            library_rows, sql_rows = engine.rows(table, now, set())
            assert sql_rows == library_rows, table
        return
    with pytest.raises(errors.FeatureNotSupported) as refused:
        engine.sql.conn.execute(call, (user_id, now))
    message = f"deduct_tokens does not cover account {user_id}: {refusal}"
    assert refused.value.diag.message_primary == message
    assert refused.value.diag.sqlstate == "0A000"
    assert (refused.value.diag.message_hint or "").startswith(
        "Deduct through token-ledger (TokenLedger.deduct, or ledger.within(...) in this"
        " transaction)"
    )
    assert engine.sql.contents() == before
    above = {"org": ["root"], "member": ["org", "root"]}.get(user_id, [])
    shares = engine.library.ledger.history(limit=100)
    assert sorted(e.user_id for e in shares if e.member_entry_id == spent.id) == sorted(above)
    assert spent.success


def credit_operations() -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Grants, holds, refunds and overage around SQL deductions and resets.

    The SQL has no functions for grants, holds and refunds: both worlds make
    them through the library, with the same ids, and deduct and reset through
    their own means. So are grants' priorities, voids, and changes of an
    account's zone or rollover cap; the accounts open with a random zone and cap.
    u2 joins and leaves u1, an organisation then: its holds are held on u1 too,
    and ``deduct_tokens`` spends from u1's own budget among those shares (and
    writes off the expired ones), refusing u2's deductions while it is a member.
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
            st.just("grant"),
            two_users,
            st.integers(1, 60),
            st.none() | st.integers(1, 45),
            st.integers(-2, 2),
        ),
        "void": st.tuples(st.just("void"), st.integers(0, 5)),
        "zone": st.tuples(st.just("zone"), two_users, zones),
        "cap": st.tuples(st.just("cap"), two_users, caps),
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
        "join": st.tuples(st.just("join"), st.just("u2"), st.sampled_from(["u1", None])),
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
            "void",
            "zone",
            "cap",
            "join",
        ]
    )
    opening = st.tuples(
        st.tuples(st.just("open"), st.just("u1"), st.just(50), st.none(), zones, caps),
        st.tuples(st.just("open"), st.just("u2"), st.just(20), st.none(), zones, caps),
    )
    return st.builds(
        lambda start, ops: [*start, *ops],
        opening,
        st.lists(st.sampled_from(weighted).flatmap(by_kind.__getitem__), min_size=10, max_size=30),
    )


REFUSALS = (
    GrantVoided,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    ReservationClosed,
    TransactionNotFound,
)


def credit_call(
    ledger: TokenLedger,
    kind: str,
    args: list[Any],
    now: datetime,
    holds: list[str],
    grants: list[str],
) -> object:
    """One library call; its result, or the kind of refusal."""
    try:
        if kind == "grant":
            user_id, amount, days, priority = (*args, 0)[:4]
            expires_at = None if days is None else now + timedelta(days=days)
            return ledger.grant(user_id, amount, expires_at=expires_at, priority=priority).reference
        if kind == "void":
            return ledger.void_grant(grants[args[0] % len(grants)]).id
        if kind == "zone":
            return ledger.set_time_zone(*args).last_monthly_reset
        if kind == "cap":
            user_id, cap = args
            return ledger.set_limit(user_id, rollover_cap=cap).rollover_cap
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
@example(
    ops=[
        ("open", "u1", 50, None, "America/Los_Angeles", 30),
        ("open", "u2", 20, None, "Pacific/Auckland", 0),
        ("grant", "u1", 10, 20, 2),  # expires before the rollover, spent after it
        ("grant", "u1", 10, 30, 1),
        ("grant", "u1", 10, 5, -1),
        ("deduct", "u1", 20, None, None),
        ("void", 1),  # the priority 1 grant
        ("zone", "u2", "Asia/Kathmandu"),
        ("cap", "u2", 15),
        ("deduct", "u2", 5, None, None),
        ("move", ("first", "America/Los_Angeles")),
        ("deduct", "u1", 70, "chat", None),  # 30 roll over; the allowance, -1, the rollover
        ("move", ("first", "Asia/Kathmandu")),
        ("reset_all",),  # u2 in its zone, 15 rolling over; u1's Los Angeles month goes on
        ("move", timedelta(days=40)),
        ("reset_one", "u1"),  # a skipped month: 30 of its allowance; the last rollover expires
        ("deduct", "u1", 1, None, None),
    ]
)
@example(
    ops=[
        ("open", "u1", 50, None),
        ("open", "u2", 20, None),
        ("join", "u2", "u1"),
        ("reserve", "u2", 10, 60),  # held on u2, and as its share on u1
        ("deduct", "u1", 45, None, None),  # 10 of u1's 50 are held for u2: refused
        ("deduct", "u1", 30, "chat", None),
        ("deduct", "u2", 5, None, None),  # refused by deduct_tokens; u1 pays its share
        ("commit", 0, 50),  # 5 of the 10, on u2 and on u1
        ("reserve", "u2", 4, 30),
        ("move", timedelta(hours=1)),
        ("deduct", "u1", 6, None, None),  # u1's share of the expired hold released first
        ("join", "u2", None),
        ("deduct", "u2", 1, None, None),  # u2 on its own again, spent by deduct_tokens
    ]
)
def test_postgres_deductions_spend_grants_overage_and_holds_as_the_library_does(
    postgres_engine: Callable[[], Engine], ops: list[tuple[Any, ...]]
) -> None:
    engine = postgres_engine()
    now = START
    holds: list[str] = []
    grants: list[str] = []
    for step, op in enumerate(ops):
        kind, *args = op
        if kind == "move":
            now = moved(now, args[0])
            continue
        if kind == "open":
            args = [*args, None, 0][:5]
        if kind in ("open", "deduct", "reset_one", "reset_all", "join"):
            for world in (engine.library, engine.sql):
                getattr(world, kind)(*args, now)
        elif (kind in ("commit", "release") and not holds) or (kind == "void" and not grants):
            continue
        else:
            results = []
            for ledger in (engine.library.ledger, engine.sql_ledger):
                engine.library.clock.set(now)
                with patch.object(ledger_operations, "new_id", numbered_ids(f"{step:02d}")):
                    results.append(credit_call(ledger, kind, args, now, holds, grants))
            assert results[0] == results[1], op
            made = isinstance(results[0], str) and results[0][0].isdigit()
            if kind == "reserve" and made:
                holds.append(results[0])
            if kind == "grant" and made:
                grants.append(results[0])
        event(kind)
        assert_same(engine, now, op)
    assert engine.sql_ledger.reconcile() == []
    for entry in engine.sql_ledger.history(limit=1000):
        if entry.operation_type in ("expire", "release", "void") or entry.effects.grants:
            event(f"{entry.operation_type}{' of grants' if entry.effects.grants else ''}")
