"""The operator's checklist through the library: health and the three alerts, on every engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import InsufficientTokens, InvalidInput, MonthlyResetPolicy, TokenLedger
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc


class MonitoringContract(ContractBase):
    """The operator's checklist through the library: health and the three alerts."""

    def test_health_counts_current_and_stale_accounts(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        for n in range(3):
            ledger.open_account(f"old-{n}", monthly_limit=10)
        clock.set(datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC))
        ledger.open_account("new", monthly_limit=10)
        ledger.deduct("old-0", 1)

        health = ledger.health()

        assert health.to_dict() == {"total_users": 4, "current": 2, "stale": 2}
        assert not health.ok
        ledger.reset_all_stale()
        assert ledger.health().ok

    def test_health_judges_anniversary_accounts_by_their_own_day(
        self, make_ledger: Callable[..., TokenLedger], clock: MovableClock
    ) -> None:
        ledger = make_ledger(MonthlyResetPolicy())
        clock.set(datetime(2026, 1, 20, tzinfo=UTC))
        ledger.open_account("anchored", monthly_limit=10, reset_anchor=clock())

        clock.set(datetime(2026, 2, 19, tzinfo=UTC))
        assert ledger.health().stale == 0
        clock.set(datetime(2026, 2, 20, tzinfo=UTC))
        assert ledger.health().stale == 1

    def test_stale_alert_waits_for_the_grace_period(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)

        clock.set(datetime(2026, 2, 1, 12, tzinfo=UTC))
        assert ledger.alerts().stale_resets.value == 0
        clock.set(datetime(2026, 2, 2, 0, 0, 1, tzinfo=UTC))
        report = ledger.alerts()
        assert report.stale_resets.value == 1
        assert [alert.name for alert in report.triggered] == ["stale_resets"]

    def test_failed_transactions_alert_counts_the_last_hour_against_its_threshold(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=1)
        for _ in range(3):
            with pytest.raises(InsufficientTokens):
                ledger.deduct("u1", 2)
        clock.advance(timedelta(minutes=61))
        for _ in range(2):
            with pytest.raises(InsufficientTokens):
                ledger.deduct("u1", 2)

        report = ledger.alerts(failed_threshold=1)

        assert report.failed_transactions.value == 2
        assert report.failed_transactions.triggered
        assert not ledger.alerts().failed_transactions.triggered

    def test_high_usage_counts_only_usage_of_the_current_period(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("heavy", monthly_limit=10)
        ledger.open_account("light", monthly_limit=10)
        ledger.open_account("exactly-90", monthly_limit=10)
        ledger.deduct("heavy", 10)
        ledger.deduct("light", 2)
        ledger.deduct("exactly-90", 9)

        report = ledger.alerts(high_usage_threshold=0)
        assert report.high_usage.value == 1
        assert report.high_usage.triggered
        assert ledger.alerts().high_usage.triggered is False

        clock.set(datetime(2026, 2, 1, tzinfo=UTC))
        assert ledger.alerts().high_usage.value == 0

    def test_alert_arguments_are_checked(self, ledger: TokenLedger) -> None:
        with pytest.raises(InvalidInput):
            ledger.alerts(usage_ratio=1.5)
        with pytest.raises(InvalidInput):
            ledger.alerts(failed_window=timedelta(hours=-1))
        with pytest.raises(InvalidInput):
            ledger.alerts(failed_threshold=-1)

    def test_alert_descriptions_say_durations_as_an_operator_would(
        self, ledger: TokenLedger
    ) -> None:
        report = ledger.alerts(stale_after=timedelta(days=2), failed_window=timedelta(minutes=90))

        assert report.stale_resets.description.endswith("pending for more than 2 days")
        assert report.failed_transactions.description == "refused operations in the last 90 minutes"
        assert ledger.alerts().failed_transactions.description.endswith("the last 1 hour")

    def test_an_expired_grant_alone_does_not_make_an_anchored_account_stale(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Stale means the period ended: anchored on the 1st and checked on the 30th, the
        store pre-selects the account, and an expired grant it holds does not count."""
        clock.set(datetime(2026, 1, 1, 12, tzinfo=timezone.utc))
        anchor = datetime(2026, 1, 1, tzinfo=timezone.utc)
        ledger.open_account("u1", monthly_limit=100, reset_anchor=anchor)
        ledger.grant("u1", 10, expires_at=datetime(2026, 1, 10, tzinfo=timezone.utc))
        ledger.deduct("u1", 95)
        clock.set(datetime(2026, 1, 30, 12, tzinfo=timezone.utc))

        health = ledger.health()
        report = ledger.alerts(usage_ratio=0.9, stale_after=timedelta(0))

        assert (health.stale, health.current) == (0, 1)
        assert report.stale_resets.value == 0
        assert report.high_usage.value == 1
        clock.set(datetime(2026, 2, 1, 12, tzinfo=timezone.utc))
        assert ledger.health().stale == 1
