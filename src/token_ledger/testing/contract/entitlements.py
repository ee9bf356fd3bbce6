"""Grant priority and voiding, rollover of unused allowance, and a time zone per account."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from token_ledger import (
    GrantNotFound,
    GrantVoided,
    IdempotencyConflict,
    InsufficientTokens,
    MonthlyResetPolicy,
    OperationType,
    TokenLedger,
)
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase, LedgerFactory

UTC = timezone.utc


class EntitlementsContract(ContractBase):
    """What quota services' users rely on: priorities, voiding, rollover, zones."""

    # grant priority and voiding

    def test_grants_are_spent_by_priority_then_soonest_expiry_then_oldest(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        soon = ledger.grant("u1", 5, expires_at=clock() + timedelta(days=2), priority=5)
        first = ledger.grant("u1", 5, priority=1)
        never = ledger.grant("u1", 5, priority=5)
        later = ledger.grant("u1", 5, expires_at=clock() + timedelta(days=20), priority=5)

        spent = ledger.deduct("u1", 10 + 5 + 5 + 2).transaction

        assert dict(spent.effects.grants) == {
            first.reference: -5,
            soon.reference: -5,
            later.reference: -2,
        }
        assert {g.id: g.remaining for g in ledger.get_account("u1").grants} == {
            later.reference: 3,
            never.reference: 5,
        }
        assert ledger.reconcile() == []

    def test_a_negative_priority_is_spent_before_the_default(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=1)
        default = ledger.grant("u1", 5)
        urgent = ledger.grant("u1", 5, priority=-3)

        spent = ledger.deduct("u1", 3).transaction

        assert dict(spent.effects.grants) == {urgent.reference: -2}
        assert default.reference in {g.id for g in ledger.get_account("u1").grants}

    def test_voiding_removes_what_is_left_from_every_balance_and_is_never_spent(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        kept = ledger.grant("u1", 5, priority=2)
        bought = ledger.grant("u1", 20, priority=1, reason="purchase")
        assert bought.reference is not None
        ledger.deduct("u1", 14)

        void = ledger.void_grant(bought.reference, reason="chargeback")

        assert (void.operation_type, void.amount, void.reference) == (
            OperationType.VOID,
            16,
            bought.reference,
        )
        assert dict(void.effects.grants) == {bought.reference: -16}
        assert void.operation_context == {"reason": "chargeback"}
        status = ledger.status("u1")
        assert (status.grant_balance, status.total_remaining) == (5, 5)
        assert [g.id for g in ledger.get_account("u1").grants] == [kept.reference]
        spent = ledger.deduct("u1", 5).transaction
        assert dict(spent.effects.grants) == {kept.reference: -5}
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)
        assert ledger.reconcile() == []

    def test_a_grant_is_voided_once(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        grant = ledger.grant("u1", 5).reference
        assert grant is not None
        ledger.void_grant(grant)
        before = ledger.history(limit=1000)

        with pytest.raises(GrantVoided):
            ledger.void_grant(grant)
        with pytest.raises(GrantNotFound):
            ledger.void_grant("no-such-grant")
        assert ledger.history(limit=1000) == before

    def test_a_retried_void_answers_its_first_entry(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        grant = ledger.grant("u1", 5).reference
        other = ledger.grant("u1", 5).reference
        assert grant is not None
        assert other is not None

        first = ledger.void_grant(grant, idempotency_key="void-1")
        again = ledger.void_grant(grant, idempotency_key="void-1")

        assert again == first
        with pytest.raises(IdempotencyConflict):
            ledger.void_grant(other, idempotency_key="void-1")
        assert len(ledger.history("u1", operation_type="void")) == 1

    def test_a_spent_up_grant_is_voided_with_nothing_left_to_remove(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("u1", monthly_limit=1)
        grant = ledger.grant("u1", 4).reference
        assert grant is not None
        ledger.deduct("u1", 5)

        void = ledger.void_grant(grant)

        assert void.amount == 0
        assert void.effects.grants == ()
        assert ledger.reconcile() == []

    def test_a_refund_never_brings_back_what_a_voided_grant_paid_for(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        bought = ledger.grant("u1", 10).reference
        assert bought is not None
        spent = ledger.deduct("u1", 16).transaction
        assert spent.id is not None
        ledger.void_grant(bought)

        refund = ledger.refund(spent.id)

        assert refund.amount == 16
        assert refund.effects.usage == -10
        assert refund.effects.grants == ()
        assert refund.operation_context == {"reason": None, "forfeited": 6}
        status = ledger.status("u1")
        assert (status.monthly_used, status.grant_balance) == (0, 0)
        assert ledger.reconcile() == []

    # rollover

    def test_unspent_allowance_rolls_over_up_to_the_cap_until_the_next_period_ends(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=100, rollover_cap=30)
        ledger.deduct("u1", 80)

        clock.set(datetime(2026, 2, 3, tzinfo=UTC))
        status = ledger.status("u1")
        assert (status.monthly_remaining, status.grant_balance) == (100, 20)
        ledger.deduct("u1", 110)

        reset = ledger.history("u1", operation_type="reset")[0]
        assert reset.operation_context["rollover"] == 20
        ((grant_id, carried),) = reset.effects.grants
        assert carried == 20
        rolled = {g.id: g for g in ledger.get_account("u1").grants}[grant_id]
        assert (rolled.remaining, rolled.expires_at, rolled.reason) == (
            10,
            datetime(2026, 3, 1, tzinfo=UTC),
            "rollover",
        )
        assert ledger.reconcile() == []

        clock.set(datetime(2026, 3, 1, tzinfo=UTC))
        ledger.reset_if_needed("u1")
        account = ledger.get_account("u1")
        assert [g.remaining for g in account.grants] == []
        assert ledger.status("u1").total_remaining == 100
        assert ledger.history("u1", operation_type="expire")[0].amount == 10
        assert ledger.reconcile() == []

    def test_only_the_last_ended_period_rolls_over_when_periods_were_skipped(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=100, rollover_cap=500)
        ledger.deduct("u1", 90)

        clock.set(datetime(2026, 5, 10, tzinfo=UTC))
        ledger.reset_if_needed("u1")

        (reset,) = ledger.history("u1", operation_type="reset")
        assert reset.operation_context["rollover"] == 100
        assert ledger.status("u1").grant_balance == 100
        assert [g.expires_at for g in ledger.get_account("u1").grants] == [
            datetime(2026, 6, 1, tzinfo=UTC)
        ]
        assert ledger.reconcile() == []

    def test_nothing_rolls_over_without_a_cap_or_with_nothing_left(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("plain", monthly_limit=100)
        ledger.open_account("spent", monthly_limit=100, rollover_cap=50)
        ledger.deduct("spent", 100)

        clock.set(datetime(2026, 2, 3, tzinfo=UTC))
        for user in ("plain", "spent"):
            ledger.reset_if_needed(user)
            (reset,) = ledger.history(user, operation_type="reset")
            assert "rollover" not in reset.operation_context
            assert reset.effects.grants == ()
            assert ledger.get_account(user).grants == ()

    def test_the_policy_gives_the_rollover_cap_of_new_accounts_and_set_limit_changes_it(
        self, make_ledger: LedgerFactory, clock: MovableClock
    ) -> None:
        ledger = make_ledger(policy=MonthlyResetPolicy(rollover_cap=7))
        assert ledger.open_account("u1", monthly_limit=10).rollover_cap == 7
        assert ledger.open_account("u2", monthly_limit=10, rollover_cap=0).rollover_cap == 0

        changed = ledger.set_limit("u1", rollover_cap=3)

        assert changed.rollover_cap == 3
        change = ledger.history("u1", operation_type="limit_change")[0]
        assert change.operation_context == {
            "previous_limit": 10,
            "previous_rollover_cap": 7,
            "rollover_cap": 3,
        }
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        assert ledger.status("u1").grant_balance == 3

    def test_the_bulk_reset_rolls_over_like_a_single_reset(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("a-plain", monthly_limit=10)
        ledger.open_account("b-rolls", monthly_limit=10, rollover_cap=4)
        ledger.open_account("c-plain", monthly_limit=10)

        clock.set(datetime(2026, 2, 3, tzinfo=UTC))
        assert ledger.reset_all_stale() == 3

        assert ledger.status("b-rolls").grant_balance == 4
        assert ledger.get_account("a-plain").grants == ()
        assert ledger.reconcile() == []

    # a time zone per account

    def test_an_account_in_its_own_zone_resets_at_its_local_midnight(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        clock.set(datetime(2026, 1, 31, 10, 0, tzinfo=UTC))
        ledger.open_account("auckland", monthly_limit=10, time_zone="Pacific/Auckland")
        ledger.open_account("utc", monthly_limit=10)
        ledger.deduct("auckland", 4)
        ledger.deduct("utc", 4)

        clock.set(datetime(2026, 1, 31, 11, 0, tzinfo=UTC))  # 1 February, 00:00 in Auckland

        assert ledger.status("auckland").monthly_used == 0
        assert ledger.status("auckland").next_reset == datetime(
            2026, 3, 1, tzinfo=ZoneInfo("Pacific/Auckland")
        )
        assert ledger.status("utc").monthly_used == 4
        assert ledger.reset_if_needed("auckland") is True
        assert ledger.reset_if_needed("utc") is False
        assert ledger.reconcile() == []

    def test_a_change_of_zone_keeps_the_usage_and_ends_the_period_at_the_new_boundary(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 6)

        moved = ledger.set_time_zone("u1", "America/Los_Angeles")

        berlin_would = datetime(2026, 2, 1, tzinfo=ZoneInfo("America/Los_Angeles"))
        assert moved.time_zone == "America/Los_Angeles"
        assert moved.monthly_tokens_used == 6
        assert ledger.status("u1").next_reset == berlin_would
        entry = ledger.history("u1", operation_type="limit_change")[0]
        assert entry.operation_context == {
            "previous_limit": 10,
            "previous_time_zone": None,
            "time_zone": "America/Los_Angeles",
        }
        clock.set(datetime(2026, 2, 1, 3, 0, tzinfo=UTC))  # still January in Los Angeles
        assert ledger.status("u1").monthly_used == 6
        clock.set(berlin_would)
        assert ledger.status("u1").monthly_used == 0
        assert ledger.set_time_zone("u1", None).time_zone is None
        assert ledger.reconcile() == []

    @pytest.mark.parametrize(
        ("zone", "period"),
        [
            (
                "America/Los_Angeles",
                (datetime(2026, 1, 1, 8, tzinfo=UTC), datetime(2026, 2, 1, 8, tzinfo=UTC)),
            ),
            (
                "Pacific/Auckland",
                (datetime(2026, 1, 31, 11, tzinfo=UTC), datetime(2026, 2, 28, 11, tzinfo=UTC)),
            ),
        ],
    )
    def test_a_refund_after_a_change_of_zone_gives_no_usage_back_to_a_period_a_reset_ended(
        self,
        ledger: TokenLedger,
        clock: MovableClock,
        zone: str,
        period: tuple[datetime, datetime],
    ) -> None:
        """Two hours after the UTC month's reset, the change makes the new zone's period the
        account's, which began before the reset and before the deduction refunded then:
        that deduction's usage is an ended period's, credited (it went back to usage that
        the reset had taken already: -39)."""
        clock.set(datetime(2026, 1, 31, 18, tzinfo=UTC))
        ledger.open_account("u1", monthly_limit=100)
        before = ledger.deduct("u1", 44).transaction.id
        assert before is not None
        clock.set(datetime(2026, 2, 1, 2, tzinfo=UTC))
        after = ledger.deduct("u1", 5).transaction.id
        assert after is not None

        ledger.set_time_zone("u1", zone)
        ledger.refund(before)
        ledger.refund(after, 2)

        status = ledger.status("u1")
        assert (status.monthly_used, status.grant_balance) == (3, 44)
        assert (status.period_start, status.next_reset) == period
        assert ledger.reconcile() == []

    def test_the_bulk_reset_and_health_follow_each_accounts_zone(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        clock.set(datetime(2026, 1, 31, 10, 0, tzinfo=UTC))
        ledger.open_account("a-tokyo", monthly_limit=10, time_zone="Asia/Tokyo")
        ledger.open_account("b-utc", monthly_limit=10)
        ledger.open_account("c-honolulu", monthly_limit=10, time_zone="Pacific/Honolulu")

        clock.set(datetime(2026, 1, 31, 23, 0, tzinfo=UTC))  # February in Tokyo only

        assert (ledger.health().stale, ledger.health().current) == (1, 2)
        assert ledger.reset_all_stale() == 1
        assert ledger.get_account("a-tokyo").last_monthly_reset == datetime(
            2026, 2, 1, tzinfo=ZoneInfo("Asia/Tokyo")
        )
        clock.set(datetime(2026, 2, 1, 10, 0, tzinfo=UTC))  # February everywhere
        assert ledger.health().stale == 2
        assert ledger.reset_all_stale() == 2
        assert ledger.health().stale == 0

    def test_an_anniversary_in_its_own_zone_keeps_its_anchor(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        sydney = ZoneInfo("Australia/Sydney")
        anchor = datetime(2026, 1, 31, 9, 30, tzinfo=sydney)
        clock.set(anchor)
        ledger.open_account(
            "u1", monthly_limit=10, reset_anchor=anchor, time_zone="Australia/Sydney"
        )

        status = ledger.status("u1")

        assert status.period_start == anchor
        assert status.next_reset == datetime(2026, 2, 28, 9, 30, tzinfo=sydney)
        clock.set(datetime(2026, 3, 31, 9, 30, tzinfo=sydney))
        assert ledger.status("u1").period_start == datetime(2026, 3, 31, 9, 30, tzinfo=sydney)
