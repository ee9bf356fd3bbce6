"""The shared row code: one column order for writing and reading, each filter written once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backends import RepositoryFactory, memory_repository, postgres_repository, sqlite_repository
from token_ledger.account import TokenAccount
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.repository import AccountFilter, StaleCutoffs, TokenRepository
from token_ledger.sqlite import ROWS, WRITE, SQLiteRepository
from token_ledger.transactions import Effects, OperationType, Transaction

UTC = timezone.utc
AT = datetime(2026, 1, 15, 12, 30, 45, 123456, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

# Every value distinct, so that two columns written in each other's place would show.
ACCOUNT = TokenAccount(
    user_id="ada",
    monthly_limit=1000,
    monthly_tokens_used=250,
    last_monthly_reset=AT - timedelta(days=14),
    created_at=AT - timedelta(days=40),
    updated_at=AT - timedelta(hours=1),
    reset_anchor=AT - timedelta(days=45),
    overage_limit=30,
    grant_balance=40,
    reserved_tokens=50,
)
GRANT = Grant("g-1", "ada", 70, 40, AT - timedelta(days=2), AT + timedelta(days=9), "promo")
HOLD = Reservation(
    id="r-1",
    user_id="ada",
    amount=50,
    created_at=AT - timedelta(minutes=5),
    expires_at=AT + timedelta(minutes=55),
    status=ReservationStatus.HELD,
    feature="chat",
)
ENTRY = Transaction(
    id=17,
    user_id="ada",
    operation_type=OperationType.DEDUCT,
    amount=90,
    created_at=AT,
    balance_after=660,
    success=False,
    feature="chat",
    operation_context={"model": "small", "tokens": [60, 30]},
    idempotency_key="key-1",
    effects=Effects(usage=50, grants={"g-1": -40}),
    reference="r-1",
)


def test_a_written_row_reads_back_as_the_value_it_was_written_from() -> None:
    """``RowWriter`` writes the columns in the order ``RowReader`` reads them.

    An entry's row has no ``id`` (``NEW_TRANSACTION_COLUMNS``): the database assigns it.
    """
    assert ROWS.account(WRITE.account_row(ACCOUNT)) == ACCOUNT
    assert ROWS.grant(WRITE.grant_row(GRANT)) == GRANT
    assert ROWS.reservation(WRITE.reservation_row(HOLD)) == HOLD
    assert ROWS.transaction((ENTRY.id, *WRITE.entry_row(ENTRY))) == ENTRY


def test_entries_store_their_context_and_effects_as_compact_json(tmp_path: Path) -> None:
    """One encoder for both JSON columns: no spaces after ``,`` and ``:``."""
    repository = SQLiteRepository(tmp_path / "ledger.db")
    with repository.unit_of_work() as work:
        work.append_transactions([ENTRY])

    stored = repository.db.conn.execute(
        "SELECT operation_context, effects FROM token_transactions"
    ).fetchall()
    repository.close()
    assert stored == [('{"model":"small","tokens":[60,30]}', '{"usage":50,"grants":{"g-1":-40}}')]


# The filters, on every engine: the same accounts, whichever engine selects them.

ENGINES = [
    pytest.param(memory_repository, id="memory"),
    pytest.param(sqlite_repository, id="sqlite"),
    pytest.param(postgres_repository, marks=pytest.mark.postgres, id="postgres"),
]
CALENDAR = datetime(2026, 2, 1, tzinfo=UTC)
ANCHORED = datetime(2026, 1, 20, tzinfo=UTC)
ANCHOR = datetime(2025, 12, 20, tzinfo=UTC)


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenRepository]:
    """An empty repository of the engine under test, without the optional SQL's triggers."""
    factory: RepositoryFactory = request.param
    repository = factory(request, tmp_path)
    yield repository
    repository.close()


def account(
    user_id: str,
    last_monthly_reset: datetime = AT,
    *,
    used: int = 0,
    limit: int = 100,
    anchor: datetime | None = None,
) -> TokenAccount:
    return TokenAccount(
        user_id=user_id,
        monthly_limit=limit,
        monthly_tokens_used=used,
        last_monthly_reset=last_monthly_reset,
        created_at=AT,
        updated_at=AT,
        reset_anchor=anchor,
    )


def stored(repository: TokenRepository, *accounts: TokenAccount) -> None:
    with repository.unit_of_work() as work:
        for each in accounts:
            assert work.insert_account(each)


def scanned(
    repository: TokenRepository, where: AccountFilter, after: str | None = None
) -> list[str]:
    return [a.user_id for a in repository.scan_accounts(where, after, 100)]


def test_the_stale_rule_has_the_same_bounds_on_every_engine(store: TokenRepository) -> None:
    """Without an anchor: before the calendar cutoff; anchored: at or before the anchored one."""
    stored(
        store,
        account("calendar-before", CALENDAR - MICROSECOND),
        account("calendar-at", CALENDAR),
        account("calendar-past-anchored", ANCHORED + MICROSECOND),
        account("anchored-at", ANCHORED, anchor=ANCHOR),
        account("anchored-after", ANCHORED + MICROSECOND, anchor=ANCHOR),
        account("anchored-before-calendar", CALENDAR - MICROSECOND, anchor=ANCHOR),
    )
    cutoffs = StaleCutoffs(calendar=CALENDAR, anchored=ANCHORED)
    expected = ["anchored-at", "calendar-before", "calendar-past-anchored"]

    assert scanned(store, AccountFilter(stale=cutoffs)) == expected
    assert scanned(store, AccountFilter(stale=cutoffs), after="anchored-at") == expected[1:]
    with store.unit_of_work() as work:
        locked = work.lock_stale_candidates(cutoffs, "calendar-before", 100)
    assert [a.user_id for a in locked] == expected[2:]


def test_usage_above_is_the_seeds_float_quotient_on_every_engine(store: TokenRepository) -> None:
    """``monthly_tokens_used / monthly_limit > ratio`` with both columns as floats.

    10**18 - 60 rounds to the float 1e18, so the float quotient is 1.0, while
    the exact one rounds to the float below 1.0: only the float formula, the
    seed's ``::float``, counts the account above that float.
    """
    stored(
        store,
        account("half", used=50, limit=100),
        account("almost-all", used=10**18 - 60, limit=10**18),
        account("none", used=0, limit=100),
    )

    assert scanned(store, AccountFilter(usage_above=0.5)) == ["almost-all"]
    assert scanned(store, AccountFilter(usage_above=0.49)) == ["almost-all", "half"]
    assert scanned(store, AccountFilter(usage_above=1 - 2**-53)) == ["almost-all"]
    assert scanned(store, AccountFilter(usage_above=1.0)) == []
