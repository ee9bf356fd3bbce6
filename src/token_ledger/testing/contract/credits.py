"""Refunds, grants, reservations, overage and reconciliation, on every engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from token_ledger import (
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    OperationType,
    ReservationClosed,
    ReservationNotFound,
    ReservationStatus,
    TokenLedger,
    TransactionNotFound,
)
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc


class CreditsContract(ContractBase):
    """Refunds, grants, reservations, overage and reconciliation."""

    def test_grants_are_spent_after_the_allowance_soonest_expiry_first(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        never = ledger.grant("u1", 5, reason="purchase")
        soon = ledger.grant("u1", 5, expires_at=clock() + timedelta(days=3), reason="promo")
        later = ledger.grant("u1", 5, expires_at=clock() + timedelta(days=30))

        spent = ledger.deduct("u1", 17).transaction

        assert spent.effects.usage == 10
        assert dict(spent.effects.grants) == {soon.reference: -5, later.reference: -2}
        status = ledger.status("u1")
        assert (status.monthly_remaining, status.grant_balance, status.total_remaining) == (0, 8, 8)
        assert never.reference is not None
        assert ledger.reconcile() == []

    def test_an_expired_grant_stops_counting_at_its_instant_and_is_written_off_when_touched(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        expiry = clock() + timedelta(days=2)
        grant = ledger.grant("u1", 7, expires_at=expiry)
        ledger.deduct("u1", 12)

        clock.set(expiry)
        assert ledger.status("u1").grant_balance == 0
        assert ledger.history("u1", operation_type="expire") == []
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)

        expired = ledger.history("u1", operation_type="expire")
        assert [(e.amount, e.reference) for e in expired] == [(5, grant.reference)]
        assert ledger.get_account("u1").grant_balance == 0
        assert ledger.reconcile("u1") == []

    def test_grant_arguments_are_checked(self, ledger: TokenLedger, clock: MovableClock) -> None:
        ledger.open_account("u1", monthly_limit=10)

        with pytest.raises(InvalidInput):
            ledger.grant("u1", 5, expires_at=clock())
        with pytest.raises(InvalidAmount):
            ledger.grant("u1", 0)
        assert ledger.history("u1") == []

    def test_a_retried_grant_is_granted_once(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)

        first = ledger.grant("u1", 5, idempotency_key="order-42")
        again = ledger.grant("u1", 5, idempotency_key="order-42")

        assert again == first
        assert ledger.status("u1").grant_balance == 5

    def test_refunds_return_tokens_and_never_exceed_what_is_left(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=50)
        spent = ledger.deduct("u1", 20).transaction
        assert spent.id is not None

        partial = ledger.refund(spent.id, 5, reason="partial outage")
        rest = ledger.refund(spent.id)

        assert (partial.amount, rest.amount) == (5, 15)
        assert rest.reference == str(spent.id)
        assert ledger.status("u1").monthly_used == 0
        with pytest.raises(InvalidAmount, match="refunded in full"):
            ledger.refund(spent.id, 1)
        assert ledger.reconcile() == []

    def test_a_refund_larger_than_what_is_left_is_refused_and_writes_nothing(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        spent = ledger.deduct("u1", 20).transaction
        assert spent.id is not None
        ledger.refund(spent.id, 15)

        with pytest.raises(InvalidAmount, match="only 5 are left"):
            ledger.refund(spent.id, 6)

        assert ledger.status("u1").monthly_used == 5
        assert len(ledger.history("u1", operation_type="refund")) == 1

    def test_only_successful_deductions_can_be_refunded(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=5)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 6)
        failed = ledger.history("u1")[0]
        assert failed.id is not None

        with pytest.raises(InvalidInput):
            ledger.refund(failed.id)
        with pytest.raises(TransactionNotFound):
            ledger.refund(failed.id + 1000)

    def test_refunding_a_deduction_of_an_ended_period_credits_a_grant(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        spent = ledger.deduct("u1", 20).transaction
        assert spent.id is not None
        clock.set(datetime(2026, 2, 10, tzinfo=UTC))
        ledger.deduct("u1", 30)

        refund = ledger.refund(spent.id, reason="billing dispute")

        status = ledger.status("u1")
        assert (status.monthly_used, status.grant_balance, status.total_remaining) == (30, 20, 40)
        assert refund.effects.usage == 0
        assert ledger.reconcile() == []

    def test_refunds_return_to_the_grant_the_deduction_drew_on(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.grant("u1", 10)
        spent = ledger.deduct("u1", 15).transaction
        assert spent.id is not None

        ledger.refund(spent.id, 12)

        status = ledger.status("u1")
        assert (status.monthly_used, status.grant_balance) == (0, 7)
        assert ledger.reconcile() == []

    def test_reserved_tokens_are_unavailable_until_committed(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=100)
        hold = ledger.reserve("u1", 80, feature="llm")

        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 21)
        assert ledger.status("u1").reserved == 80
        result = ledger.commit(hold.id, 30)

        assert result.monthly_remaining == 70
        status = ledger.status("u1")
        assert (status.monthly_used, status.reserved, status.total_remaining) == (30, 0, 70)
        assert [e.operation_type for e in ledger.history("u1", reference=hold.id)] == [
            OperationType.COMMIT,
            OperationType.RESERVE,
        ]
        with pytest.raises(ReservationClosed):
            ledger.release(hold.id)
        assert ledger.reconcile() == []

    def test_a_reservation_can_be_released_and_not_committed_past_its_amount(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=100)
        hold = ledger.reserve("u1", 40)

        with pytest.raises(InvalidAmount):
            ledger.commit(hold.id, 41)
        ledger.release(hold.id)

        assert ledger.status("u1").total_remaining == 100
        with pytest.raises(ReservationClosed):
            ledger.commit(hold.id, 1)
        with pytest.raises(ReservationNotFound):
            ledger.commit("no-such-hold", 1)

    def test_a_reservation_beyond_what_is_spendable_is_refused_and_recorded(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)

        with pytest.raises(InsufficientTokens):
            ledger.reserve("u1", 11)

        failed = ledger.history("u1", success=False)
        assert [(e.operation_type, e.amount) for e in failed] == [(OperationType.RESERVE, 11)]

    def test_a_hold_past_its_ttl_releases_itself_at_the_next_write(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        hold = ledger.reserve("u1", 10, ttl=timedelta(minutes=5))

        clock.advance(timedelta(minutes=5))
        assert ledger.status("u1").total_remaining == 10
        ledger.deduct("u1", 10)

        release = ledger.history("u1", operation_type="release")[0]
        assert (release.reference, release.operation_context["reason"]) == (hold.id, "expired")
        with pytest.raises(ReservationClosed, match="expired"):
            ledger.commit(hold.id, 1)
        assert ledger.reconcile() == []

    def test_a_reservation_held_across_a_month_end_is_spent_in_the_new_period(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """The hold keeps its tokens through the reset; the commit counts in the period it
        happens."""
        clock.set(datetime(2026, 1, 31, 23, 55, tzinfo=UTC))
        ledger.open_account("u1", monthly_limit=100)
        ledger.deduct("u1", 50)
        hold = ledger.reserve("u1", 50, ttl=timedelta(minutes=30))

        clock.set(datetime(2026, 2, 1, 0, 10, tzinfo=UTC))
        assert ledger.status("u1").total_remaining == 50
        ledger.commit(hold.id, 20)

        status = ledger.status("u1")
        assert (status.monthly_used, status.reserved, status.total_remaining) == (20, 0, 80)
        assert ledger.reconcile() == []

    def test_overage_lets_deductions_go_past_the_limit_up_to_the_overage_limit(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.set_limit("u1", overage_limit=5)

        ledger.deduct("u1", 14)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 2)

        status = ledger.status("u1")
        assert (status.monthly_used, status.overage_used, status.monthly_remaining) == (14, 4, 0)
        assert status.total_remaining == 1
        change = ledger.history("u1", operation_type="limit_change")[0]
        assert change.operation_context == {
            "previous_limit": 10,
            "previous_overage_limit": 0,
            "overage_limit": 5,
        }

    def test_reconcile_finds_a_tampered_balance(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 4)
        account = ledger.get_account("u1")
        # Stamped a second later, as every writer records when it wrote: the optional
        # SQL's triggers judge an unstamped write by the database's clock, not the test's.
        tampered = attrs.evolve(
            account, monthly_tokens_used=3, updated_at=account.updated_at + timedelta(seconds=1)
        )
        with ledger.repository.unit_of_work() as work:
            work.save_accounts([tampered])

        found = ledger.reconcile()

        assert [(d.user_id, d.field, d.stored, d.expected) for d in found] == [
            ("u1", "monthly_tokens_used", 3, 4)
        ]

    def test_reservation_status_is_stored(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        hold = ledger.reserve("u1", 3)
        assert hold.status is ReservationStatus.HELD
