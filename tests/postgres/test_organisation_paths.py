"""Organisations on PostgreSQL: a path is loaded and locked root first in one statement,
a move that races a deduction is run again, and the shortcuts leave windowed accounts and
members of deeper paths to the domain."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from postgres.support import PATIENCE, wait_for_lock_wait
from postgres.test_round_trips import Wire
from postgres_server import Database
from token_ledger import AccountNotFound, InsufficientTokens, LedgerInvariantError, TokenLedger
from token_ledger.organisations import MAX_DEPTH
from token_ledger.postgres import PostgresRepository, PostgresUnitOfWork
from token_ledger.postgres_async import AsyncPostgresRepository
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

UTC = timezone.utc
JANUARY = datetime(2026, 1, 15, 12, tzinfo=UTC)


def table(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def locked_elsewhere(database: Database, schema: str, user_id: str) -> bool:
    """Whether another transaction holds ``user_id``'s row: a lock that cannot wait fails."""
    with database.connect() as conn, conn.transaction():
        try:
            conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE user_id = %s FOR UPDATE NOWAIT").format(
                    table(schema, "user_tokens")
                ),
                (user_id,),
            )
        except psycopg.errors.LockNotAvailable:
            return True
    return False


@contextmanager
def holding(database: Database, schema: str, user_id: str) -> Iterator[None]:
    """``user_id``'s row locked by a transaction of another connection until the block ends."""
    with database.connect() as conn, conn.transaction():
        conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE user_id = %s FOR UPDATE").format(
                table(schema, "user_tokens")
            ),
            (user_id,),
        )
        yield


@contextmanager
def while_held(
    database: Database, schema: str, user_id: str, call: Callable[[], Any]
) -> Iterator[list[Any]]:
    """``call`` in a thread while another connection's transaction holds ``user_id``'s row;
    the block runs meanwhile, then the row is let go and ``call``'s result (or error) given."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # the test asserts on it
            outcome.append(error)

    thread = threading.Thread(target=run)
    with holding(database, schema, user_id):
        thread.start()
        try:
            yield outcome
        finally:
            assert outcome == []  # still waiting
    thread.join(PATIENCE)
    assert not thread.is_alive()


def named_ledger(database: Database, schema: str, name: str) -> tuple[ConnectionPool, TokenLedger]:
    pool: ConnectionPool[Any] = ConnectionPool(
        database.url, min_size=1, max_size=1, kwargs={"application_name": name}, open=True
    )
    return pool, TokenLedger.postgres(pool, schema=schema)


def test_a_members_deduction_waits_at_its_organisation_before_locking_its_own_row(
    postgres_database: Database, postgres_schema: str
) -> None:
    """Root first: while another transaction holds the organisation, the member's deduction
    waits for it and holds nothing yet, so the member's row is free for a lock that cannot
    wait. Locking the member first would hold it while waiting, and could deadlock."""
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.open_account("acme", monthly_limit=1000)
        ledger.open_account("alice", monthly_limit=500, organisation_id="acme")
        name = "tl_member_deduction"
        pool, member = named_ledger(postgres_database, postgres_schema, name)
        deduct = lambda: member.deduct("alice", 5)  # noqa: E731
        with (
            pool,
            member,
            while_held(postgres_database, postgres_schema, "acme", deduct) as outcome,
        ):
            wait_for_lock_wait(postgres_database, name)
            assert not locked_elsewhere(postgres_database, postgres_schema, "alice")
        assert [spent.transaction.success for spent in outcome] == [True]
        assert ledger.status("acme").monthly_used == 5
        assert ledger.reconcile() == []


def test_a_path_of_three_loads_root_first_and_locks_it_in_that_order(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The leaf's deduction waits at the middle organisation, holding the root only."""
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.open_account("root", monthly_limit=1000)
        ledger.open_account("mid", monthly_limit=1000, organisation_id="root")
        ledger.open_account("leaf", monthly_limit=1000, organisation_id="mid")
        ledger.open_account("other", monthly_limit=1000, organisation_id="mid")

        repository = PostgresRepository(postgres_database.url, schema=postgres_schema)
        try:
            with repository.unit_of_work() as work:
                path = work.load_path("leaf")
                assert [a.user_id for a in path] == ["root", "mid", "leaf"]
                assert [a.organisation_id for a in path] == [None, "root", "mid"]
                for user_id in ("root", "mid", "leaf"):
                    assert locked_elsewhere(postgres_database, postgres_schema, user_id)
                assert not locked_elsewhere(postgres_database, postgres_schema, "other")
                assert work.load_path("nobody") == []
                assert [a.user_id for a in work.load_path("root")] == ["root"]
                assert work.members_of("mid") == ["leaf", "other"]
                assert work.members_of("leaf") == []
        finally:
            repository.close()

        name = "tl_leaf_deduction"
        pool, leaf = named_ledger(postgres_database, postgres_schema, name)
        # The shortcut, tried once, finds a path longer than it covers: from then on the
        # leaf's deduction takes the locked path at once, whose order is under test.
        leaf.deduct("leaf", 1)
        deduct = lambda: leaf.deduct("leaf", 7)  # noqa: E731
        with pool, leaf, while_held(postgres_database, postgres_schema, "mid", deduct) as outcome:
            wait_for_lock_wait(postgres_database, name)
            assert locked_elsewhere(postgres_database, postgres_schema, "root")
            assert not locked_elsewhere(postgres_database, postgres_schema, "leaf")
        [spent] = outcome
        entry = spent.transaction
        shares = [e for user_id in ("root", "mid") for e in ledger.history(user_id)[:1]]
        assert [(s.user_id, s.amount, s.member_entry_id) for s in shares] == [
            ("root", 7, entry.id),
            ("mid", 7, entry.id),
        ]
        repository = PostgresRepository(postgres_database.url, schema=postgres_schema)
        try:
            with repository.unit_of_work() as work:
                assert entry.id is not None
                assert work.entries_mirroring(entry.id) == sorted(shares, key=lambda e: e.id or 0)
                assert [e.user_id for e in work.entries_mirroring(entry.id)] == ["root", "mid"]
        finally:
            repository.close()
        assert ledger.reconcile() == []


class _CountingRepository(PostgresRepository):
    """Counts its units of work, so a test sees a retry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.units_of_work = 0

    @contextmanager
    def unit_of_work(self) -> Iterator[PostgresUnitOfWork]:
        self.units_of_work += 1
        with super().unit_of_work() as work:
            yield work


def test_a_move_that_races_a_deduction_makes_it_run_again_on_the_new_path(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The deduction read the path [acme, alice] and waits at acme; meanwhile alice moves to
    other and commits. Once acme is free the deduction locks alice as the move left her,
    finds the path changed, and runs again: it is spent from other's budget, not acme's.
    (The locked path's race: the shortcut's is the test after this one.)"""
    url = postgres_database.url
    with TokenLedger.postgres(url, schema=postgres_schema) as ledger:
        ledger.open_account("acme", monthly_limit=1000)
        ledger.open_account("other", monthly_limit=1000)
        ledger.open_account("alice", monthly_limit=500, organisation_id="acme")
        name = "tl_racing_deduction"
        pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=1, kwargs={"application_name": name}, open=True
        )
        with pool:
            counted = _CountingRepository(pool, schema=postgres_schema)
            counted.deduct_directly = None  # type: ignore[method-assign,assignment]
            racing = TokenLedger(counted)
            deduct = lambda: racing.deduct("alice", 9)  # noqa: E731
            with while_held(postgres_database, postgres_schema, "acme", deduct) as outcome:
                wait_for_lock_wait(postgres_database, name)
                # Were alice locked before acme, the move would wait for her while the test
                # holds acme: the lock timeout turns that into a failure rather than a hang.
                impatient = psycopg.conninfo.make_conninfo(url, options="-c lock_timeout=10s")
                with TokenLedger.postgres(impatient, schema=postgres_schema) as mover:
                    moved = mover.move_to_organisation("alice", "other")
                assert moved.organisation_id == "other"
        [spent] = outcome
        assert spent.transaction.success
        assert counted.units_of_work == 2
        assert ledger.status("acme").monthly_used == 0
        assert ledger.status("other").monthly_used == 9
        [share] = ledger.history("other")
        assert share.member_entry_id == spent.transaction.id
        assert ledger.reconcile() == []


def test_a_move_that_races_the_members_statement_leaves_the_old_organisation_untouched(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The member's statement waits at acme; meanwhile alice moves to other and commits.
    Once acme is free the statement locks alice as the move left her, no member of acme,
    and writes nothing at all; the locked path then spends from other's budget."""
    url = postgres_database.url
    with TokenLedger.postgres(url, schema=postgres_schema) as ledger:
        ledger.open_account("acme", monthly_limit=1000)
        ledger.open_account("other", monthly_limit=1000)
        ledger.open_account("alice", monthly_limit=500, organisation_id="acme")
        name = "tl_racing_statement"
        pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=1, kwargs={"application_name": name}, open=True
        )
        with pool:
            counted = _CountingRepository(pool, schema=postgres_schema)
            racing = TokenLedger(counted)
            deduct = lambda: racing.deduct("alice", 9)  # noqa: E731
            with while_held(postgres_database, postgres_schema, "acme", deduct) as outcome:
                wait_for_lock_wait(postgres_database, name)
                assert not locked_elsewhere(postgres_database, postgres_schema, "alice")
                impatient = psycopg.conninfo.make_conninfo(url, options="-c lock_timeout=10s")
                with TokenLedger.postgres(impatient, schema=postgres_schema) as mover:
                    mover.move_to_organisation("alice", "other")
        [spent] = outcome
        assert spent.transaction.success
        assert counted.units_of_work == 1
        assert ledger.status("acme").monthly_used == 0
        assert ledger.history("acme") == []
        assert ledger.status("other").monthly_used == 9
        [share] = ledger.history("other")
        assert share.member_entry_id == spent.transaction.id
        assert ledger.reconcile() == []


def test_members_spending_at_once_never_overspend_their_organisation_nor_deadlock(
    postgres_database: Database, postgres_schema: str
) -> None:
    """Eight threads deduct from four members of a two-level organisation and from the
    organisations themselves: the root's budget holds, and each budget adds up."""
    url = postgres_database.url
    with TokenLedger.postgres(url, schema=postgres_schema) as ledger:
        ledger.open_account("root", monthly_limit=300)
        ledger.open_account("team", monthly_limit=1000, organisation_id="root")
        members = [f"member-{n}" for n in range(4)]
        for n, user_id in enumerate(members):
            above = "team" if n % 2 else "root"
            ledger.open_account(user_id, monthly_limit=1000, organisation_id=above)
        rng = random.Random(18)
        asks = [(rng.choice([*members, "team", "root"]), rng.randint(1, 5)) for _ in range(240)]
        pool: ConnectionPool[Any] = ConnectionPool(url, min_size=8, max_size=8, open=True)
        with pool, TokenLedger.postgres(pool, schema=postgres_schema) as shared:

            def spend(ask: tuple[str, int]) -> int:
                try:
                    return shared.deduct(*ask).transaction.amount
                except InsufficientTokens:
                    return 0

            with ThreadPoolExecutor(8) as threads:
                spent = sum(threads.map(spend, asks))

        assert spent == ledger.status("root").monthly_used
        assert 300 - 5 < spent <= 300
        assert ledger.reconcile() == []


def test_a_cycle_written_by_hand_is_cut_at_the_deepest_path(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The walk up stops after MAX_DEPTH accounts: a cycle made in psql cannot loop."""
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.open_account("a", monthly_limit=10)
        ledger.open_account("b", monthly_limit=10, organisation_id="a")
    with postgres_database.connect() as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET organisation_id = 'b' WHERE user_id = 'a'").format(
                table(postgres_schema, "user_tokens")
            )
        )
    repository = PostgresRepository(postgres_database.url, schema=postgres_schema)
    try:
        with repository.unit_of_work() as work:
            path = work.load_path("b")
        assert len(path) == MAX_DEPTH
        assert [a.user_id for a in path[-2:]] == ["a", "b"]
        ledger = TokenLedger(repository)
        with pytest.raises(LedgerInvariantError, match="longer than 8 accounts"):
            ledger.deduct("b", 1)
        assert not ledger.history(operation_type="deduct")
    finally:
        repository.close()


def test_the_organisation_is_a_foreign_key_checked_at_once(
    postgres_database: Database, postgres_schema: str
) -> None:
    """A member cannot name a missing organisation, nor can an organisation with members
    be deleted, even by hand."""
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.open_account("acme", monthly_limit=10)
        ledger.open_account("alice", monthly_limit=10, organisation_id="acme")
    accounts = table(postgres_schema, "user_tokens")
    with postgres_database.connect() as conn:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                sql.SQL("UPDATE {} SET organisation_id = 'nobody' WHERE user_id = 'alice'").format(
                    accounts
                )
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(sql.SQL("DELETE FROM {} WHERE user_id = 'acme'").format(accounts))
        deferrable = conn.execute(
            "SELECT condeferrable FROM pg_constraint WHERE conname = %s"
            " AND connamespace = %s::regnamespace",
            ("user_tokens_organisation_id_fkey", sql.Identifier(postgres_schema).as_string(None)),
        ).fetchone()
    assert deferrable == (False,)


@pytest.fixture
def wired(
    postgres_database: Database, postgres_schema: str
) -> Iterator[tuple[TokenLedger, Wire, MovableClock]]:
    clock = MovableClock(JANUARY)
    # Not prepared: psycopg prepares a statement at its fifth run, in a round trip of its own.
    with ConnectionPool(
        postgres_database.url,
        min_size=1,
        max_size=1,
        open=True,
        kwargs={"prepare_threshold": None},
    ) as pool:
        ledger = TokenLedger.postgres(pool, schema=postgres_schema, clock=clock)
        yield ledger, Wire(pool), clock


def test_the_shortcut_leaves_members_and_windowed_accounts_to_the_locked_path(
    wired: tuple[TokenLedger, Wire, MovableClock],
) -> None:
    """The one statement matches neither and says so, once, and so does the member's
    statement, sent then; a member of a root takes the member's statement (at once, the
    second time), and an organisation without windows the common one. A plain account's
    locked path is no longer for the path's walk up, and the locked path is a member's in
    an organisation that is a member too."""
    ledger, wire, clock = wired
    ledger.open_account("acme", monthly_limit=1000)
    ledger.open_account("alice", monthly_limit=500, organisation_id="acme")
    ledger.open_account("team", monthly_limit=1000, organisation_id="acme")
    ledger.open_account("carol", monthly_limit=500, organisation_id="team")
    ledger.open_account("bob", monthly_limit=500, window_caps={"day": 300})
    ledger.open_account("anchored", monthly_limit=100, reset_anchor=clock() - timedelta(days=3))
    plain_locked_path = 5  # BEGIN, the path's locking SELECT, UPDATE, INSERT, COMMIT
    member_locked_path = 7  # and two organisations' shares: UPDATE of three rows, 3 INSERTs

    assert wire.round_trips(lambda: ledger.deduct("anchored", 5)) == 2 + plain_locked_path
    assert wire.round_trips(lambda: ledger.deduct("alice", 5)) == 2
    assert wire.round_trips(lambda: ledger.deduct("alice", 5)) == 1
    assert wire.round_trips(lambda: ledger.deduct("carol", 5)) == 2 + member_locked_path
    assert wire.round_trips(lambda: ledger.deduct("carol", 5)) == member_locked_path
    assert wire.round_trips(lambda: ledger.deduct("bob", 5)) == 2 + plain_locked_path
    assert wire.round_trips(lambda: ledger.deduct("bob", 5)) == plain_locked_path
    assert wire.round_trips(lambda: ledger.deduct("acme", 5)) == 1
    assert ledger.get_account("acme").monthly_tokens_used == 5 + 5 + 10 + 5
    assert ledger.get_account("team").monthly_tokens_used == 10
    assert ledger.get_account("bob").windows[0].used == 10
    assert ledger.reconcile() == []


def test_the_bulk_reset_leaves_windowed_accounts_to_the_domain(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The domain's reset starts the windows again too: the one-statement run, which does
    not, stops at a windowed account as at one with grants."""
    clock = MovableClock(JANUARY)
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema, clock=clock) as ledger:
        for user_id in ("a-plain", "b-windowed", "c-plain"):
            caps = {"day": 50} if user_id == "b-windowed" else None
            ledger.open_account(user_id, monthly_limit=100, window_caps=caps)
            ledger.deduct(user_id, 10)
        clock.advance(timedelta(days=40))
        assert ledger.reset_all_stale() == 3
        [window] = ledger.get_account("b-windowed").windows
        assert (window.used, window.start) == (0, datetime(2026, 2, 24, tzinfo=UTC))
        for user_id in ("a-plain", "b-windowed", "c-plain"):
            assert ledger.get_account(user_id).monthly_tokens_used == 0
        assert ledger.reconcile() == []


def test_the_asyncio_engine_loads_and_locks_a_path_root_first(
    postgres_database: Database, postgres_schema: str
) -> None:
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.open_account("root", monthly_limit=1000)
        ledger.open_account("mid", monthly_limit=1000, organisation_id="root")
        ledger.open_account("leaf", monthly_limit=1000, organisation_id="mid")
        entry = ledger.deduct("leaf", 3).transaction
        hold = ledger.reserve("leaf", 4)

    async def scenario() -> tuple[list[Any], list[str], list[Any]]:
        repository = AsyncPostgresRepository(postgres_database.url, schema=postgres_schema)
        await repository.open()
        try:
            async with repository.unit_of_work() as work:
                path = await work.load_path("leaf")
                locked = [
                    await asyncio.to_thread(
                        locked_elsewhere, postgres_database, postgres_schema, a.user_id
                    )
                    for a in path
                ]
                assert locked == [True, True, True]
                assert await work.load_path("nobody") == []
                assert entry.id is not None
                return path, await work.members_of("root"), await work.entries_mirroring(entry.id)
        finally:
            await repository.close()

    path, members, shares = asyncio.run(scenario())
    assert [a.user_id for a in path] == ["root", "mid", "leaf"]
    assert [[h.id for h in a.holds] for a in path] == [
        [f"{hold.id}/root"],
        [f"{hold.id}/mid"],
        [hold.id],
    ]
    assert members == ["mid"]
    assert [(s.user_id, s.member_entry_id) for s in shares] == [
        ("root", entry.id),
        ("mid", entry.id),
    ]


def test_a_member_of_a_missing_organisation_is_refused_before_anything_is_written(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The domain finds the organisation missing when it locks its path: the key's check
    is never what refuses it."""
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        with pytest.raises(AccountNotFound, match="nobody"):
            ledger.open_account("alice", monthly_limit=10, organisation_id="nobody")
        assert ledger.health().total_users == 0
