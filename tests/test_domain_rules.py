"""The rules that need stored state, tested on values alone: no engine, no facade."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from token_ledger import (
    InvalidAmount,
    InvalidInput,
    MonthlyResetPolicy,
    OperationType,
    ReservationClosed,
    TokenAccount,
    Transaction,
    reservations,
)
from token_ledger.change import Change, _refuse_impossible
from token_ledger.errors import IdempotencyConflict, LedgerInvariantError
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.refunds import RefundPlan, earlier_refunds, plan_refund, refundable
from token_ledger.transactions import Effects, replay

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
POLICY = MonthlyResetPolicy()


def deduction(amount: int, effects: Effects, at: datetime = NOW, **fields: object) -> Transaction:
    return Transaction("u1", OperationType.DEDUCT, amount, at, 0, id=7, effects=effects, **fields)


def refund_of(amount: int) -> Transaction:
    return Transaction("u1", OperationType.REFUND, amount, NOW, 0, reference="7")


# refunds


def test_only_successful_deductions_and_commits_are_refundable() -> None:
    failed = deduction(5, Effects(), success=False)
    grant = attrs.evolve(deduction(5, Effects()), operation_type=OperationType.GRANT)

    for entry in (failed, grant):
        with pytest.raises(InvalidInput):
            refundable(entry, [], None)


def test_a_refund_takes_what_is_left_and_never_more() -> None:
    spent = deduction(10, Effects(usage=10))

    assert refundable(spent, [refund_of(4)], None) == 6
    assert refundable(spent, [refund_of(4)], 6) == 6
    with pytest.raises(InvalidAmount):
        refundable(spent, [refund_of(4)], 7)
    with pytest.raises(InvalidAmount):
        refundable(spent, [refund_of(4), refund_of(6)], None)


def test_earlier_refunds_are_the_refund_entries_among_those_referencing() -> None:
    other = Transaction("u1", OperationType.EXPIRE, 3, NOW, 0, reference="7")

    assert earlier_refunds([other, refund_of(2)]) == [refund_of(2)]


def test_tokens_go_back_to_usage_then_live_grants_and_the_rest_is_credited() -> None:
    """Sources in order: usage, then grants by id; what earlier refunds returned is skipped."""
    spent = deduction(10, Effects(usage=4, grants={"a-live": -3, "b-gone": -3}))

    plan = plan_refund(
        spent,
        2,
        7,
        period_start=NOW - timedelta(days=1),
        reset_since=False,
        live_grant_ids={"a-live"},
    )

    assert plan == RefundPlan(usage=2, grants=(("a-live", 3),), credit=2)


def test_usage_of_an_ended_period_is_credited() -> None:
    spent = deduction(5, Effects(usage=5), at=NOW - timedelta(days=40))

    plan = plan_refund(
        spent, 0, 5, period_start=NOW - timedelta(days=14), reset_since=False, live_grant_ids=()
    )

    assert plan == RefundPlan(usage=0, grants=(), credit=5)


def test_usage_of_a_deduction_that_a_reset_came_after_is_credited() -> None:
    """Whenever the period starts: a change of zone may start it before that reset."""
    spent = deduction(44, Effects(usage=44), at=NOW - timedelta(hours=8))

    plan = plan_refund(
        spent, 0, 44, period_start=NOW - timedelta(days=30), reset_since=True, live_grant_ids=()
    )

    assert plan == RefundPlan(usage=0, grants=(), credit=44)


# grants, holds, idempotency


def test_a_grant_must_expire_in_the_future() -> None:
    with pytest.raises(InvalidInput):
        Grant.offered("g", "u1", 5, NOW, expires_at=NOW)

    assert Grant.offered("g", "u1", 5, NOW, expires_at=NOW + timedelta(seconds=1)).remaining == 5


def test_only_a_hold_still_held_can_be_settled_and_for_at_most_its_amount() -> None:
    account = TokenAccount.open("u1", 50, POLICY, NOW)
    hold = Reservation("r", "u1", 5, NOW, NOW + timedelta(minutes=1))
    held = reservations.reserve(account, POLICY, NOW, hold, idempotency_key=None).account

    with pytest.raises(InvalidAmount):
        reservations.settle_hold(held, POLICY, NOW, hold, 6)
    with pytest.raises(ReservationClosed) as expired:
        reservations.settle_hold(held, POLICY, NOW + timedelta(minutes=1), hold, 1)
    assert expired.value.status == "expired"
    committed = attrs.evolve(hold, status=ReservationStatus.COMMITTED)
    with pytest.raises(ReservationClosed) as closed:
        reservations.settle_hold(account, POLICY, NOW, committed, 1)
    assert closed.value.status == "committed"
    assert reservations.settle_hold(held, POLICY, NOW, hold, 5).account.monthly_tokens_used == 5


def test_a_replay_must_repeat_the_original_call() -> None:
    prior = deduction(5, Effects(usage=5), idempotency_key="k", feature="chat")

    assert replay(prior, OperationType.DEDUCT, "u1", 5, "chat") is prior
    for call in (
        (OperationType.DEDUCT, "u1", 6, "chat"),
        (OperationType.DEDUCT, "u2", 5, "chat"),
        (OperationType.DEDUCT, "u1", 5, None),
        (OperationType.GRANT, "u1", 5, "chat"),
    ):
        with pytest.raises(IdempotencyConflict):
            replay(prior, *call)


# invariants


def test_no_change_may_spend_past_the_limit_and_overage() -> None:
    """The spending rules never do; a change that did is refused, whatever the engine."""
    account = TokenAccount.open("u1", 10, POLICY, NOW)
    overspent = attrs.evolve(account, monthly_tokens_used=11)

    with pytest.raises(LedgerInvariantError):
        _refuse_impossible(account, Change(overspent))


def test_usage_above_a_lowered_limit_may_stay_or_fall_within_its_period() -> None:
    used = attrs.evolve(TokenAccount.open("u1", 10, POLICY, NOW), monthly_tokens_used=8)
    lowered = attrs.evolve(used, monthly_limit=4)

    _refuse_impossible(used, Change(lowered))
    _refuse_impossible(lowered, Change(attrs.evolve(lowered, monthly_tokens_used=6)))
    with pytest.raises(LedgerInvariantError):
        _refuse_impossible(lowered, Change(attrs.evolve(lowered, monthly_tokens_used=9)))


def test_stored_figures_stay_within_int64() -> None:
    account = TokenAccount.open("u1", 10, POLICY, NOW)

    with pytest.raises(InvalidAmount):
        _refuse_impossible(account, Change(attrs.evolve(account, grant_balance=2**63)))
