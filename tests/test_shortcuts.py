"""Every shortcut gives what the path it shortcuts gives: the same rows, entries and answers.

A shortcut (:class:`token_ledger.commands.Shortcut`) is a faster way to a
command's result through a repository method that adapters may lack: the
deduction in one guarded statement, the operator queries counted by the
database, the bulk reset set-based. Generated sequences of every operation,
with clock moves across month ends and a clock that stands still, run on two
repositories of one engine: one with every shortcut its adapter has, one with
none (its optional methods set to ``None``, so every call takes the path an
adapter without them takes). After every step both hold the same rows in all
tables, ids included, and every call answered the same, refusals included;
the operator queries (health, alerts, reconcile) answer alike too, on ledgers
whose stored figures have been tampered with. Accounts join and leave
organisations (a root, and one under it, so paths of two and three accounts),
and have thresholds of their own or the ledger's, which some examples set.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest.mock import patch

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from postgres_server import Database
from token_ledger import MonthlyResetPolicy, TokenLedger, TokenLedgerError, operations
from token_ledger.memory import MemoryRepository
from token_ledger.postgres import PostgresRepository
from token_ledger.repository import SHORTCUT_METHODS, TokenRepository
from token_ledger.sqlite import SQLiteRepository, format_instant
from token_ledger.testing import MovableClock
from token_ledger.thresholds import Threshold

UTC = timezone.utc
START = datetime(2026, 1, 28, 12, tzinfo=UTC)
USERS = ("u1", "u2", "u3", "o1", "o2")
"""``o1`` and ``o2`` are opened as organisations (``o2`` a member of ``o1``), but any
account may join any other."""
TABLES = (
    "user_tokens",
    "token_transactions",
    "token_grants",
    "token_reservations",
    "token_notifications",
)
DEFAULT_THRESHOLDS = (Threshold(50), Threshold(90), Threshold(100), Threshold.nothing_left())

users = st.sampled_from(USERS)
organisation_ids = st.sampled_from([None, "o1", "o1", "o2"])
moves = st.sampled_from(
    [
        timedelta(0),  # a clock that stands still: two writes at one instant
        timedelta(0),
        timedelta(microseconds=1),
        timedelta(minutes=-30),
        timedelta(minutes=7),
        timedelta(hours=5),
        timedelta(days=2),
        timedelta(days=11),
        timedelta(days=40),
        "last microsecond of the month",
        "first microsecond of the next month",
    ]
)
contexts = st.sampled_from([{}, {"n": 1}, {"text": "ünïcode", "nested": {"list": [1, 2.5, None]}}])
by_kind = {
    "open": st.tuples(
        st.just("open"),
        users,
        st.integers(1, 60),
        st.none() | st.none() | st.timedeltas(timedelta(days=-45), timedelta(days=45)),
        organisation_ids,
    ),
    "join": st.tuples(st.just("join"), users, organisation_ids),
    "thresholds": st.tuples(
        st.just("thresholds"),
        users,
        st.sampled_from([None, (), (Threshold(30),), (Threshold(80), Threshold.nothing_left())]),
    ),
    "deduct": st.tuples(
        st.just("deduct"),
        users,
        st.integers(1, 40),
        st.sampled_from([None, "chat"]),
        st.sampled_from([None, None, "k1", "k2", "k3"]),
        contexts,
    ),
    "set_limit": st.tuples(
        st.just("set_limit"), users, st.none() | st.integers(1, 80), st.integers(0, 20)
    ),
    "grant": st.tuples(st.just("grant"), users, st.integers(1, 30), st.none() | st.integers(1, 40)),
    "reserve": st.tuples(st.just("reserve"), users, st.integers(1, 30), st.integers(1, 600)),
    "commit": st.tuples(st.just("commit"), st.integers(0, 5), st.integers(0, 100)),
    "release": st.tuples(st.just("release"), st.integers(0, 5)),
    "refund": st.tuples(st.just("refund"), st.integers(0, 5), st.none() | st.integers(1, 30)),
    "move": st.tuples(st.just("move"), moves),
    "reset_one": st.tuples(st.just("reset_one"), users),
    "reset_all": st.tuples(st.just("reset_all"), st.sampled_from([1, 2, 3, 1000])),
    "tamper": st.tuples(
        st.just("tamper"),
        users,
        st.sampled_from(["monthly_tokens_used", "grant_balance", "reserved_tokens", "grant"]),
        st.integers(-3, 3),
    ),
}
WEIGHTED = (
    ["deduct"] * 6
    + ["move"] * 4
    + ["open", "set_limit", "grant", "reserve", "commit", "release", "refund"]
    + ["join", "thresholds"]
    + ["reset_one", "reset_all", "reset_all", "tamper"]
)
operation = st.sampled_from(WEIGHTED).flatmap(by_kind.__getitem__)
sequences = st.builds(
    lambda rest: [
        ("open", "o1", 90, None, None),
        ("open", "o2", 40, None, "o1"),
        ("open", "u1", 50, None, "o1"),
        ("open", "u2", 20, None, None),
        *rest,
    ],
    st.lists(operation, min_size=5, max_size=30),
)
defaults = st.sampled_from([(), DEFAULT_THRESHOLDS])


def moved(now: datetime, move: timedelta | str) -> datetime:
    if isinstance(move, timedelta):
        return now + move
    year, month = divmod(now.year * 12 + now.month, 12)
    next_month = datetime(year, month + 1, 1, tzinfo=UTC)
    return next_month - timedelta(microseconds=1) if move.startswith("last") else next_month


def with_events(repository: TokenRepository) -> TokenRepository:
    """The repository, telling hypothesis's statistics how often each shortcut answered."""
    for name in SHORTCUT_METHODS:
        method = getattr(repository, name, None)
        if method is None:
            continue

        def counted(*args: Any, method: Any = method, name: str = name) -> Any:
            answer = method(*args)
            event(f"{name}: {'declined' if answer is None else 'answered'}")
            if name == "deduct_directly" and answer is not None:
                account = repository.get_account(answer.entry.user_id)
                if account is not None and account.organisation_id is not None:
                    event("deduct_directly: answered for a member")
            return answer

        setattr(repository, name, counted)
    return repository


def without_shortcuts(repository: TokenRepository) -> TokenRepository:
    """The repository as an adapter without any optional method would be."""
    for name in SHORTCUT_METHODS:
        setattr(repository, name, None)
    return repository


class Store:
    """The rows of one repository, whatever its engine, and the means to empty and tamper."""

    def __init__(self, repository: TokenRepository, database: Database | None) -> None:
        self.repository = repository
        self.conn: Any = None
        if isinstance(repository, SQLiteRepository):
            self.conn = repository.db.conn
        elif isinstance(repository, PostgresRepository):
            assert database is not None
            self.conn = database.connect()
            schema = repository._schema
            self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))

    def close(self) -> None:
        if isinstance(self.repository, PostgresRepository):
            self.conn.close()

    def empty(self) -> None:
        if isinstance(self.repository, MemoryRepository):
            MemoryRepository.__init__(self.repository)
        elif isinstance(self.repository, SQLiteRepository):
            self.conn.executescript("".join(f"DELETE FROM {table};" for table in TABLES))
        else:
            self.conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")

    def rows(self) -> list[Any]:
        if isinstance(self.repository, MemoryRepository):
            accounts = sorted(self.repository._accounts.items())
            reservations = sorted(self.repository._reservations.items())
            return [
                accounts,
                list(self.repository._entries),
                reservations,
                list(self.repository._notifications),
            ]
        return [
            self.conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in TABLES
        ]

    def tamper(self, user_id: str, figure: str, delta: int, now: datetime) -> None:
        """Change a stored figure behind the ledger's back, as a stray UPDATE would.

        It stamps ``updated_at`` as the ledger does, so that the optional SQL's
        triggers judge it at the ledger's instant rather than at the database's
        clock, which is not the test's.
        """
        if isinstance(self.repository, MemoryRepository):
            import attrs

            accounts = self.repository._accounts
            if user_id not in accounts:
                return
            account = accounts[user_id]
            if figure == "grant":
                if account.grants:
                    first = account.grants[0]
                    changed = attrs.evolve(first, remaining=max(0, first.remaining + delta))
                    accounts[user_id] = attrs.evolve(account, grants=(changed, *account.grants[1:]))
                return
            value = max(0, getattr(account, figure) + delta)
            accounts[user_id] = attrs.evolve(account, **{figure: value, "updated_at": now})
            return
        mark = "?" if isinstance(self.repository, SQLiteRepository) else "%s"
        if figure == "grant":
            statement = (
                f"UPDATE token_grants SET remaining = max(0, min(amount, remaining + {mark}))"
                f" WHERE id = (SELECT min(id) FROM token_grants WHERE user_id = {mark})"
            )
            if not isinstance(self.repository, SQLiteRepository):
                statement = statement.replace("max(", "greatest(")
                statement = statement.replace("min(amount", "least(amount")
        else:
            greatest = "max" if isinstance(self.repository, SQLiteRepository) else "greatest"
            statement = (
                f"UPDATE user_tokens SET {figure} = {greatest}(0, {figure} + {mark}),"
                f" updated_at = CASE WHEN updated_at = {mark} THEN {mark} ELSE {mark} END"
                f" WHERE user_id = {mark}"
            )
            earlier = now - timedelta(microseconds=1)
            stamps: tuple[Any, ...] = (now, earlier, now)
            if isinstance(self.repository, SQLiteRepository):
                stamps = tuple(format_instant(stamp) for stamp in stamps)
            self.conn.execute(statement, (delta, *stamps, user_id))
            return
        self.conn.execute(statement, (delta, user_id))


def numbered_ids(prefix: str) -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"{prefix}-{next(numbers)}"


def call(
    ledger: TokenLedger,
    op: tuple[Any, ...],
    now: datetime,
    holds: list[str],
    spent: list[int],
) -> object:
    """One library call; what it returned, or the refusal it raised."""
    kind, *args = op
    try:
        if kind == "open":
            user_id, limit, anchor, organisation_id = args
            return ledger.open_account(
                user_id,
                limit,
                reset_anchor=None if anchor is None else now + anchor,
                organisation_id=organisation_id,
            )
        if kind == "join":
            return ledger.move_to_organisation(*args)
        if kind == "thresholds":
            return ledger.set_thresholds(*args)
        if kind == "deduct":
            user_id, amount, feature, key, context = args
            return ledger.deduct(
                user_id, amount, feature=feature, idempotency_key=key, context=context
            )
        if kind == "set_limit":
            user_id, limit, overage = args
            return ledger.set_limit(user_id, limit, overage_limit=overage)
        if kind == "grant":
            user_id, amount, days = args
            expires_at = None if days is None else now + timedelta(days=days)
            return ledger.grant(user_id, amount, expires_at=expires_at)
        if kind == "reserve":
            user_id, amount, minutes = args
            return ledger.reserve(user_id, amount, ttl=timedelta(minutes=minutes))
        if kind == "commit":
            index, percent = args
            return ledger.commit(holds[index % len(holds)], percent % 7) if holds else None
        if kind == "release":
            return ledger.release(holds[args[0] % len(holds)]) if holds else None
        if kind == "refund":
            index, amount = args
            return ledger.refund(spent[index % len(spent)], amount) if spent else None
        if kind == "reset_one":
            return ledger.reset_if_needed(args[0])
        if kind == "reset_all":
            return ledger.reset_all_stale(batch_size=args[0])
        raise AssertionError(kind)
    except TokenLedgerError as refused:
        return (type(refused).__name__, str(refused))


def operator_answers(ledger: TokenLedger) -> list[object]:
    return [
        ledger.health(),
        ledger.alerts(),
        ledger.alerts(stale_after=timedelta(0), usage_ratio=0.5, failed_window=timedelta(days=90)),
        ledger.reconcile(),
        *(call_or_refusal(ledger.reconcile, user_id) for user_id in USERS),
    ]


def call_or_refusal(function: Callable[..., object], *args: Any) -> object:
    try:
        return function(*args)
    except TokenLedgerError as refused:
        return (type(refused).__name__, str(refused))


def remember(result: object, holds: list[str], spent: list[int]) -> None:
    reservation_id = getattr(result, "id", None)
    if isinstance(reservation_id, str):
        holds.append(reservation_id)
    transaction = getattr(result, "transaction", None)
    if transaction is not None and transaction.operation_type == "deduct":
        spent.append(transaction.id)


def apply(
    pair: tuple[Store, Store],
    ledgers: tuple[TokenLedger, TokenLedger],
    clock: MovableClock,
    ops: list[tuple[Any, ...]],
) -> None:
    now = START
    holds: list[str] = []
    spent: list[int] = []
    for step, op in enumerate(ops):
        kind = op[0]
        if kind == "move":
            now = moved(now, op[1])
            continue
        clock.set(now)
        if kind == "tamper":
            for store in pair:
                store.tamper(*op[1:], now)
            answers = [operator_answers(ledger) for ledger in ledgers]
            assert answers[0] == answers[1], op
            continue
        results = []
        for ledger in ledgers:
            with patch.object(operations, "new_id", numbered_ids(f"{step:02d}")):
                results.append(call(ledger, op, now, holds, spent))
        assert results[0] == results[1], op
        remember(results[0], holds, spent)
        assert pair[0].rows() == pair[1].rows(), op
        event(kind)
    answers = [operator_answers(ledger) for ledger in ledgers]
    assert answers[0] == answers[1]


@pytest.fixture
def stores(
    repository_factory: Callable[[], TokenRepository], request: pytest.FixtureRequest
) -> Iterator[Callable[[MonthlyResetPolicy], tuple[tuple[Store, Store], tuple[TokenLedger, ...]]]]:
    """Two repositories of the engine under test, one without shortcuts; emptied per example."""
    database: Database | None = None
    if "postgres" in request.node.callspec.id:
        database = request.getfixturevalue("postgres_database")
    clock = MovableClock(START)
    made: dict[str, Any] = {}
    with ExitStack() as stack:

        def fresh(
            policy: MonthlyResetPolicy, thresholds: tuple[Threshold, ...] = ()
        ) -> tuple[tuple[Store, Store], tuple[Any, ...]]:
            if not made:
                repositories = [
                    with_events(repository_factory()),
                    without_shortcuts(repository_factory()),
                ]
                for repository in repositories:
                    adopt_policy = getattr(repository, "adopt_policy", None)
                    if adopt_policy is not None:
                        adopt_policy(policy)
                made["stores"] = tuple(Store(r, database) for r in repositories)
                for store in made["stores"]:
                    stack.callback(store.close)
            for store in made["stores"]:
                store.empty()
            ledgers = tuple(
                TokenLedger(store.repository, policy=policy, clock=clock, thresholds=thresholds)
                for store in made["stores"]
            )
            return made["stores"], (*ledgers, clock)

        yield fresh  # type: ignore[misc]


FIXTURES_PER_TEST = [HealthCheck.function_scoped_fixture]
FROZEN_CLOCK = [
    ("open", "u1", 50, None, None),
    ("open", "u2", 20, None, None),
    ("deduct", "u1", 5, None, None, {}),
    ("deduct", "u1", 5, "chat", "k1", {"n": 1}),  # the same instant: updated_at one µs back
    ("deduct", "u1", 5, "chat", "k1", {"n": 1}),  # a replay
    ("deduct", "u1", 6, "chat", "k1", {}),  # a conflict
    ("move", timedelta(microseconds=1)),
    ("deduct", "u1", 40, None, None, {}),  # a refusal
    ("deduct", "u1", 35, None, None, {}),  # all that is left
    ("set_limit", "u2", None, 5),
    ("deduct", "u2", 24, None, None, {}),  # into overage
    ("move", "first microsecond of the next month"),
    ("deduct", "u1", 1, None, "k2", {}),  # a reset pending
    ("deduct", "u1", 1, None, "k3", {}),
    ("grant", "u1", 10, None),
    ("deduct", "u1", 1, None, None, {}),  # a grant: the locked path
    ("reset_all", 1),
]
MIXED_BATCHES = [
    ("open", "u1", 50, None, None),
    ("open", "u2", 20, None, None),
    ("open", "u3", 20, timedelta(days=-3), None),
    ("deduct", "u1", 5, None, None, {}),
    ("deduct", "u2", 5, None, None, {}),
    ("deduct", "u3", 5, None, None, {}),
    ("grant", "u2", 10, 3),
    ("reserve", "u1", 3, 60),
    ("move", timedelta(days=40)),
    ("reset_all", 1000),  # a calendar account, one with an expired grant, an anniversary
    ("move", timedelta(days=31)),
    ("reset_all", 2),
    ("tamper", "u1", "monthly_tokens_used", 2),
    ("tamper", "u2", "grant", -1),
]

MEMBERS = [
    ("open", "o1", 90, None, None),
    ("open", "o2", 40, None, "o1"),
    ("open", "u1", 50, None, "o1"),
    ("open", "u2", 20, None, "o2"),  # a path of three accounts
    ("move", timedelta(seconds=1)),
    ("deduct", "u1", 5, None, None, {}),
    ("deduct", "u1", 5, "chat", "k1", {"n": 1}),  # the same instant: updated_at one µs back
    ("move", timedelta(microseconds=1)),
    ("deduct", "u1", 5, "chat", "k1", {"n": 1}),  # a replay
    ("deduct", "u1", 6, "chat", "k1", {}),  # a conflict
    ("deduct", "u1", 30, None, None, {}),  # past the organisation's 50 %
    ("deduct", "u2", 3, None, "k2", {}),
    ("deduct", "u1", 5, None, None, {}),  # past the member's 90 %
    ("deduct", "u1", 6, None, None, {}),  # more than the member has: a refusal
    ("join", "u2", "o1"),
    ("deduct", "u2", 2, None, None, {}),
    ("thresholds", "o1", ()),
    ("deduct", "u2", 2, None, None, {}),
    ("set_limit", "o1", None, 10),
    ("deduct", "u2", 10, None, None, {}),  # the organisation's allowance is short
    ("deduct", "u2", 10, None, None, {}),  # into the organisation's overage
    ("deduct", "u2", 10, None, None, {}),  # refused by the organisation
    ("move", "first microsecond of the next month"),
    ("deduct", "u2", 1, None, None, {}),  # both have a reset pending
    ("reset_one", "u2"),
    ("deduct", "u2", 1, None, None, {}),  # the organisation's reset is pending still
    ("grant", "o1", 10, None),
    ("deduct", "u2", 1, None, None, {}),  # the organisation has a grant
    ("join", "u2", None),
    ("deduct", "u2", 1, None, None, {}),
]


@settings(max_examples=25, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=sequences, thresholds=defaults)
@example(ops=FROZEN_CLOCK, thresholds=())
@example(ops=MIXED_BATCHES, thresholds=())
@example(ops=MEMBERS, thresholds=())
@example(ops=MEMBERS, thresholds=DEFAULT_THRESHOLDS)
def test_every_shortcut_stores_and_answers_what_its_path_does(
    stores: Callable[..., Any], ops: list[tuple[Any, ...]], thresholds: tuple[Threshold, ...]
) -> None:
    pair, (*ledgers, clock) = stores(MonthlyResetPolicy(), thresholds)
    apply(pair, (ledgers[0], ledgers[1]), clock, ops)


@settings(max_examples=10, suppress_health_check=FIXTURES_PER_TEST)
@given(ops=sequences, thresholds=defaults)
@example(ops=MIXED_BATCHES, thresholds=())
@example(ops=MEMBERS, thresholds=DEFAULT_THRESHOLDS)
def test_shortcuts_agree_in_another_time_zone(
    stores: Callable[..., Any], ops: list[tuple[Any, ...]], thresholds: tuple[Threshold, ...]
) -> None:
    """Periods that start at local midnight, where UTC's month has not yet turned."""
    pair, (*ledgers, clock) = stores(MonthlyResetPolicy(timezone="Pacific/Kiritimati"), thresholds)
    apply(pair, (ledgers[0], ledgers[1]), clock, ops)


def test_an_adapter_offers_the_shortcuts_it_is_tested_with(
    repository: TokenRepository,
) -> None:
    """SQLite and PostgreSQL offer every shortcut; the in-memory engine offers none."""
    offered = {name for name in SHORTCUT_METHODS if getattr(repository, name, None) is not None}
    expected = set() if isinstance(repository, MemoryRepository) else set(SHORTCUT_METHODS)
    assert offered == expected


_ = (sqlite3, psycopg)  # engines whose rows Store reads
