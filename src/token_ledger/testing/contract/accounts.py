"""Opening accounts and reading their status, on every engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import AccountExists, AccountNotFound, TokenLedger
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc


class AccountsContract(ContractBase):
    """Opening accounts and reading their status."""

    def test_open_account_starts_the_current_calendar_month_with_nothing_used(
        self,
        ledger: TokenLedger,
    ) -> None:
        account = ledger.open_account("u1", monthly_limit=50)

        assert account.monthly_tokens_used == 0
        assert account.last_monthly_reset == datetime(2026, 1, 1, tzinfo=UTC)
        assert ledger.get_account("u1") == account

    def test_open_account_twice_raises_account_exists_and_keeps_the_first(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)

        with pytest.raises(AccountExists):
            ledger.open_account("u1", monthly_limit=99)

        assert ledger.get_account("u1").monthly_limit == 50

    def test_ensure_account_creates_once_and_then_returns_the_stored_account(
        self,
        ledger: TokenLedger,
    ) -> None:
        created = ledger.ensure_account("u1", monthly_limit=50)
        ledger.deduct("u1", 5)

        again = ledger.ensure_account("u1", monthly_limit=999)

        assert created.monthly_limit == 50
        assert (again.monthly_limit, again.monthly_tokens_used) == (50, 5)

    def test_status_of_a_missing_account_raises_account_not_found(
        self, ledger: TokenLedger
    ) -> None:
        with pytest.raises(AccountNotFound):
            ledger.status("nobody")

    def test_status_reports_the_seed_json_and_the_period(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 36)

        status = ledger.status("u1")

        assert status.to_dict() == {"monthlyUsed": 36, "monthlyLimit": 50, "monthlyRemaining": 14}
        assert status.period_start == datetime(2026, 1, 1, tzinfo=UTC)
        assert status.next_reset == datetime(2026, 2, 1, tzinfo=UTC)

    def test_timestamps_round_trip_as_utc_instants_to_the_microsecond(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        berlin_time = datetime(2026, 1, 20, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
        clock.set(berlin_time)
        ledger.open_account("u1", monthly_limit=50, reset_anchor=berlin_time)

        stored = ledger.get_account("u1")

        assert stored.created_at == berlin_time
        assert stored.created_at.utcoffset() == timedelta(0)
        assert stored.reset_anchor == berlin_time
        assert stored.last_monthly_reset == berlin_time

    def test_largest_limit_round_trips(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=2**63 - 1)
        ledger.deduct("u1", 2**63 - 2)

        assert ledger.status("u1").monthly_remaining == 1

    def test_user_ids_are_opaque_strings(self, ledger: TokenLedger) -> None:
        odd = "ümlaut 'quote\" %_ ; DROP TABLE user_tokens; --"
        ledger.open_account(odd, monthly_limit=5)
        ledger.deduct(odd, 2)

        assert ledger.status(odd).monthly_used == 2
        assert [entry.user_id for entry in ledger.history(odd)] == [odd]

    def test_every_write_changes_updated_at_even_when_the_clock_does_not_move(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """The optional SQL's triggers tell the library's writes by a changed ``updated_at``."""
        opened = ledger.open_account("u1", monthly_limit=50).updated_at
        microsecond = timedelta(microseconds=1)

        ledger.deduct("u1", 1)
        assert ledger.get_account("u1").updated_at == opened - microsecond
        ledger.deduct("u1", 1)
        assert ledger.get_account("u1").updated_at == opened

        clock.advance(timedelta(hours=-1))
        ledger.set_limit("u1", 60)
        assert ledger.get_account("u1").updated_at == clock()
