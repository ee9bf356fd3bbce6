"""The bulk reset: a batch at a time, a fixed number of statements each, never cut short."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from postgres.support import counting_cursor, wait_for_lock_wait
from postgres_server import Database
from token_ledger import MonthlyResetPolicy, TokenAccount, TokenLedger
from token_ledger.postgres import PostgresRepository
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

UTC = timezone.utc
ACCOUNTS = 3000
BATCH = 1000


@pytest.mark.parametrize("set_based", [True, False], ids=["set-based", "by-the-domain"])
def test_resetting_thousands_of_accounts_takes_a_fixed_number_of_statements_a_batch(
    postgres_database: Database, postgres_schema: str, set_based: bool
) -> None:
    """One statement a batch when the database can reset every account of it (no anchor,
    grant or hold); three without that statement (an adapter that lacks it): the locking
    SELECT, then the UPDATE and the INSERT for the whole batch."""
    january = datetime(2026, 1, 15, tzinfo=UTC)
    opened = [
        TokenAccount.open(f"user-{n:05d}", 100, MonthlyResetPolicy(), january)
        for n in range(ACCOUNTS)
    ]
    used = [
        attrs.evolve(account, monthly_tokens_used=n % 100 + 1) for n, account in enumerate(opened)
    ]
    cursor = counting_cursor()
    pool = ConnectionPool(
        postgres_database.url, min_size=1, max_size=1, open=True, kwargs={"cursor_factory": cursor}
    )
    with pool:
        repository = PostgresRepository(pool, schema=postgres_schema)
        if not set_based:
            repository.reset_calendar_run = None  # type: ignore[assignment]
        with repository.unit_of_work() as work:
            for account in opened:
                work.insert_account(account)
            work.save_accounts(used)
        clock = MovableClock(datetime(2026, 2, 1, 0, 1, tzinfo=UTC))
        ledger = TokenLedger(repository, clock=clock)
        cursor.statements.clear()

        assert ledger.reset_all_stale(batch_size=BATCH) == ACCOUNTS

        batches = ACCOUNTS // BATCH + 1  # the last one finds nothing left
        if set_based:
            assert len(cursor.statements) == batches
            assert all(text.startswith("WITH RECURSIVE batch") for text in cursor.statements)
        else:
            assert len(cursor.statements) == 3 * (batches - 1) + 1
        resets = ledger.history(operation_type="reset", limit=ACCOUNTS + 1)
        assert sorted(entry.user_id for entry in resets) == [a.user_id for a in opened]
        assert sum(entry.amount for entry in resets) == sum(a.monthly_tokens_used for a in used)
        assert ledger.reset_all_stale(batch_size=BATCH) == 0
        assert {ledger.get_account(a.user_id).monthly_tokens_used for a in opened[::97]} == {0}


def test_an_account_reset_by_another_writer_mid_batch_does_not_end_the_bulk_reset(
    postgres_database: Database, postgres_schema: str
) -> None:
    """The bulk reset waits on ``a`` while another writer resets it and commits.

    The batch must not come back short because of it: a short batch is the
    last one, and ``c`` and ``d`` would be left stale.
    """
    clock = MovableClock(datetime(2026, 1, 15, tzinfo=UTC))
    url = psycopg.conninfo.make_conninfo(postgres_database.url, application_name="tl-bulk")
    with TokenLedger.postgres(url, schema=postgres_schema, clock=clock) as ledger:
        for user_id in "abcd":
            ledger.open_account(user_id, monthly_limit=10)
            ledger.deduct(user_id, 4)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        with psycopg.connect(postgres_database.url) as other_writer:
            other_writer.execute(
                sql.SQL(
                    "UPDATE {} SET monthly_tokens_used = 0, last_monthly_reset = %s"
                    " WHERE user_id = 'a'"
                ).format(sql.Identifier(postgres_schema, "user_tokens")),
                (datetime(2026, 2, 1, tzinfo=UTC),),
            )
            with ThreadPoolExecutor(1) as thread:
                bulk_reset = thread.submit(ledger.reset_all_stale, batch_size=2)
                wait_for_lock_wait(postgres_database, "tl-bulk")
                other_writer.commit()
                reset_count = bulk_reset.result()

        assert reset_count == 3
        assert [ledger.get_account(u).last_monthly_reset.month for u in "abcd"] == [2, 2, 2, 2]


@pytest.mark.parametrize("set_based", [True, False], ids=["set-based", "by-the-domain"])
def test_the_bulk_reset_locks_an_organisation_before_its_members(
    postgres_database: Database, postgres_schema: str, set_based: bool
) -> None:
    """A member's write locks its organisation, then the member. The bulk reset of a batch
    of both takes them in that order too, though the member (``alice``) sorts before its
    organisation (``zeta``): in user_id order, it held ``alice`` while it waited for
    ``zeta``, which the member's write held while it waited for ``alice``, a deadlock that
    PostgreSQL broke after a second by failing one of them."""
    clock = MovableClock(datetime(2026, 1, 15, tzinfo=UTC))
    url = psycopg.conninfo.make_conninfo(postgres_database.url, application_name="tl-bulk")
    repository = PostgresRepository(url, schema=postgres_schema)
    if not set_based:
        repository.reset_calendar_run = None  # type: ignore[assignment]
    user_tokens = sql.Identifier(postgres_schema, "user_tokens")
    lock = sql.SQL("SELECT 1 FROM {} WHERE user_id = %s FOR UPDATE NOWAIT").format(user_tokens)
    with TokenLedger(repository, clock=clock) as ledger:
        ledger.open_account("zeta", monthly_limit=100)
        ledger.open_account("alice", monthly_limit=10, organisation_id="zeta")
        ledger.deduct("alice", 4)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        with psycopg.connect(postgres_database.url) as member_write:
            member_write.execute(lock, ("zeta",))
            with ThreadPoolExecutor(1) as thread:
                bulk_reset = thread.submit(ledger.reset_all_stale, batch_size=10)
                wait_for_lock_wait(postgres_database, "tl-bulk")
                member_write.execute(lock, ("alice",))  # not held by the waiting bulk reset
                member_write.commit()
                assert bulk_reset.result() == 2

        assert [ledger.status(u).monthly_used for u in ("alice", "zeta")] == [0, 0]
        assert ledger.reconcile() == []


def test_a_batch_with_grants_and_holds_reads_and_writes_them_once_for_all_its_accounts(
    postgres_database: Database, postgres_schema: str
) -> None:
    """Expiring grants and holds add one read and one write of each kind, not one per account."""
    clock = MovableClock(datetime(2026, 1, 15, tzinfo=UTC))
    cursor = counting_cursor()
    pool = ConnectionPool(
        postgres_database.url, min_size=1, max_size=1, open=True, kwargs={"cursor_factory": cursor}
    )
    users = [f"user-{n:02d}" for n in range(20)]
    with pool, TokenLedger.postgres(pool, schema=postgres_schema, clock=clock) as ledger:
        for user_id in users:
            ledger.open_account(user_id, monthly_limit=10)
            ledger.deduct(user_id, 4)
            ledger.grant(user_id, 5, expires_at=datetime(2026, 1, 20, tzinfo=UTC))
            ledger.reserve(user_id, 3)
        clock.set(datetime(2026, 2, 1, 0, 1, tzinfo=UTC))
        cursor.statements.clear()

        assert ledger.reset_all_stale(batch_size=BATCH) == len(users)

        # the table each statement is about: the first quoted name after the schema's
        tables = [text.split('"')[3] for text in cursor.statements]
        assert tables == [
            "user_tokens",  # the set-based reset, which finds every account for the domain
            "user_tokens",  # the locking SELECT of the batch
            "token_grants",
            "token_reservations",
            "user_tokens",  # UPDATE
            "token_grants",  # written off
            "token_reservations",  # released
            "token_transactions",
        ]
        assert ledger.reconcile() == []
        assert {ledger.status(u).grant_balance for u in users} == {0}
