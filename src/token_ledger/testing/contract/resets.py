"""Lazy reset on read, persisted reset on write, and the bulk reset, on every engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import InsufficientTokens, MonthlyResetPolicy, OperationType, TokenLedger
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc


class ResetsContract(ContractBase):
    """Lazy reset on read, persisted reset on write, and the bulk reset."""

    def test_status_shows_a_pending_reset_without_writing_it(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 30)
        clock.set(datetime(2026, 2, 1, tzinfo=UTC))

        status = ledger.status("u1")

        assert status.to_dict() == {"monthlyUsed": 0, "monthlyLimit": 50, "monthlyRemaining": 50}
        assert status.period_start == datetime(2026, 2, 1, tzinfo=UTC)
        stored = ledger.get_account("u1")
        assert (stored.monthly_tokens_used, stored.last_monthly_reset) == (
            30,
            datetime(2026, 1, 1, tzinfo=UTC),
        )
        assert ledger.history("u1", operation_type="reset") == []

    def test_deduct_persists_the_pending_reset_before_spending(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 30)
        clock.set(datetime(2026, 2, 3, tzinfo=UTC))

        result = ledger.deduct("u1", 45)

        assert result.monthly_remaining == 5
        newest_first = ledger.history("u1")
        assert [(e.operation_type, e.amount) for e in newest_first] == [
            (OperationType.DEDUCT, 45),
            (OperationType.RESET, 30),
            (OperationType.DEDUCT, 30),
        ]
        assert newest_first[1].operation_context == {
            "previous_used": 30,
            "previous_period_start": "2026-01-01T00:00:00.000000+00:00",
            "period_start": "2026-02-01T00:00:00.000000+00:00",
        }
        assert ledger.get_account("u1").last_monthly_reset == datetime(2026, 2, 1, tzinfo=UTC)

    def test_a_refused_deduction_still_persists_the_reset_it_revealed(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 10)
        clock.set(datetime(2026, 2, 3, tzinfo=UTC))

        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 11)

        assert ledger.get_account("u1").last_monthly_reset == datetime(2026, 2, 1, tzinfo=UTC)
        assert [e.operation_type for e in ledger.history("u1")][:2] == ["deduct", "reset"]

    def test_many_skipped_months_give_exactly_one_reset(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 50)
        clock.set(datetime(2027, 7, 9, tzinfo=UTC))

        ledger.deduct("u1", 1)

        assert len(ledger.history("u1", operation_type="reset")) == 1
        assert ledger.get_account("u1").last_monthly_reset == datetime(2027, 7, 1, tzinfo=UTC)

    def test_a_clock_that_goes_back_never_resets_twice(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        clock.set(datetime(2026, 2, 1, 0, 30, tzinfo=UTC))
        ledger.deduct("u1", 5)
        clock.set(datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
        ledger.deduct("u1", 5)
        clock.set(datetime(2026, 2, 1, 1, 0, tzinfo=UTC))
        ledger.deduct("u1", 5)

        assert len(ledger.history("u1", operation_type="reset")) == 1
        assert ledger.status("u1").monthly_used == 15
        assert ledger.get_account("u1").last_monthly_reset == datetime(2026, 2, 1, tzinfo=UTC)

    def test_reset_if_needed_reports_whether_it_reset(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 20)

        assert ledger.reset_if_needed("u1") is False
        clock.set(datetime(2026, 2, 1, tzinfo=UTC))
        assert ledger.reset_if_needed("u1") is True
        assert ledger.reset_if_needed("u1") is False
        assert ledger.get_account("u1").monthly_tokens_used == 0

    def test_reset_all_stale_resets_each_stale_account_once_in_batches(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        for n in range(7):
            ledger.open_account(f"user-{n}", monthly_limit=10)
            ledger.deduct(f"user-{n}", n + 1)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        ledger.open_account("fresh", monthly_limit=10)

        assert ledger.reset_all_stale(batch_size=3) == 7
        assert ledger.reset_all_stale(batch_size=3) == 0

        resets = ledger.history(operation_type="reset")
        assert sorted(e.user_id for e in resets) == [f"user-{n}" for n in range(7)]
        assert all(ledger.get_account(f"user-{n}").monthly_tokens_used == 0 for n in range(7))

    def test_reset_all_stale_reports_the_running_count_after_each_batch(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """The progress callback sees every committed batch: what a progress bar needs."""
        for n in range(7):
            ledger.open_account(f"user-{n}", monthly_limit=10)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        counts: list[int] = []

        assert ledger.reset_all_stale(batch_size=3, progress=counts.append) == 7

        assert counts == [3, 6, 7]

    def test_anniversary_accounts_reset_on_their_own_day(
        self, make_ledger: Callable[..., TokenLedger], clock: MovableClock
    ) -> None:
        ledger = make_ledger(MonthlyResetPolicy())
        clock.set(datetime(2026, 1, 31, 10, tzinfo=UTC))
        ledger.open_account("anchored", monthly_limit=10, reset_anchor=clock())
        ledger.open_account("calendar", monthly_limit=10)
        ledger.deduct("anchored", 4)
        ledger.deduct("calendar", 4)

        clock.set(datetime(2026, 2, 15, tzinfo=UTC))
        assert ledger.reset_all_stale() == 1
        assert ledger.status("anchored").monthly_used == 4

        clock.set(datetime(2026, 2, 28, 10, tzinfo=UTC))
        assert ledger.reset_all_stale() == 1
        assert ledger.status("anchored").period_start == datetime(2026, 2, 28, 10, tzinfo=UTC)
        assert ledger.status("anchored").next_reset == datetime(2026, 3, 31, 10, tzinfo=UTC)

    def test_set_limit_keeps_usage_and_a_downgrade_never_goes_negative(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 40)

        ledger.set_limit("u1", 30)

        status = ledger.status("u1")
        assert (status.monthly_used, status.monthly_limit, status.monthly_remaining) == (40, 30, 0)
        change = ledger.history("u1", operation_type=OperationType.LIMIT_CHANGE)[0]
        assert (change.amount, change.operation_context) == (30, {"previous_limit": 50})
        ledger.set_limit("u1", 100)
        assert ledger.deduct("u1", 60).monthly_remaining == 0

    def test_a_berlin_month_starts_at_local_midnight(
        self, make_ledger: Callable[..., TokenLedger], clock: MovableClock
    ) -> None:
        ledger = make_ledger(MonthlyResetPolicy(timezone="Europe/Berlin"))
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 10)

        clock.set(datetime(2026, 1, 31, 22, 59, tzinfo=UTC))
        assert ledger.status("u1").monthly_remaining == 0
        clock.advance(timedelta(minutes=1))
        assert ledger.status("u1").monthly_remaining == 10
        assert ledger.status("u1").period_start == datetime(2026, 1, 31, 23, tzinfo=UTC)
