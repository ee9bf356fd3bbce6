"""Random mixes of every operation and clock move, on every engine, checked after each step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from token_ledger import (
    GrantVoided,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    OperationType,
    ReservationClosed,
    TokenLedger,
)
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock

UTC = timezone.utc
USERS = ("alice", "bob")
ZONES = (None, "Pacific/Auckland", "America/Los_Angeles", "Asia/Kathmandu")
MAX_ROLLOVER_CAP = 40
users = st.sampled_from(USERS)
amounts = st.integers(1, 60)
clock_moves = st.sampled_from(
    [
        timedelta(minutes=-30),
        timedelta(minutes=7),
        timedelta(hours=5),
        timedelta(days=2),
        timedelta(days=11),
        timedelta(days=40),
    ]
)


def ledger_machine(make_repository: Callable[[], TokenRepository]) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        spends = Bundle("spends")
        grants = Bundle("grants")

        def __init__(self) -> None:
            super().__init__()
            self.clock = MovableClock(datetime(2026, 1, 28, 12, tzinfo=UTC))
            self.ledger = TokenLedger(make_repository(), clock=self.clock)
            self.usage_when_limits_changed = dict.fromkeys(USERS, 0)
            self.voided: dict[str, int] = {}
            """Grant id -> the id of the entry that voided it."""
            for user_id in USERS:
                self.ledger.open_account(user_id, monthly_limit=100)

        def teardown(self) -> None:
            self.ledger.close()

        @rule(target=spends, user_id=users, amount=amounts)
        def deduct(self, user_id: str, amount: int) -> int:
            try:
                entry_id = self.ledger.deduct(user_id, amount).transaction.id
            except InsufficientTokens:
                return 0
            assert entry_id is not None
            return entry_id

        @rule(
            target=grants,
            user_id=users,
            amount=amounts,
            days=st.none() | st.integers(1, 45),
            priority=st.integers(-2, 2),
        )
        def grant(self, user_id: str, amount: int, days: int | None, priority: int) -> str:
            expires_at = None if days is None else self.clock() + timedelta(days=days)
            entry = self.ledger.grant(user_id, amount, expires_at=expires_at, priority=priority)
            assert entry.reference is not None
            return entry.reference

        @rule(grant=grants)
        def void_grant(self, grant: str) -> None:
            try:
                entry = self.ledger.void_grant(grant)
            except GrantVoided:
                assert grant in self.voided
                return
            assert grant not in self.voided
            assert entry.id is not None
            self.voided[grant] = entry.id

        @rule(user_id=users, cap=st.integers(0, MAX_ROLLOVER_CAP))
        def set_rollover_cap(self, user_id: str, cap: int) -> None:
            self.ledger.set_limit(user_id, rollover_cap=cap)

        @rule(user_id=users, zone=st.sampled_from(ZONES))
        def set_time_zone(self, user_id: str, zone: str | None) -> None:
            used = self.ledger.status(user_id).monthly_used
            assert self.ledger.set_time_zone(user_id, zone).monthly_tokens_used == used

        @rule(target=holds, user_id=users, amount=amounts, minutes=st.integers(1, 600))
        def reserve(self, user_id: str, amount: int, minutes: int) -> str:
            try:
                return self.ledger.reserve(user_id, amount, ttl=timedelta(minutes=minutes)).id
            except InsufficientTokens:
                return ""

        @rule(target=spends, hold=consumes(holds), share=st.floats(0, 1))
        def commit(self, hold: str, share: float) -> int:
            if not hold:
                return 0
            reserved = self.ledger.history(reference=hold, operation_type="reserve")[0].amount
            try:
                entry_id = self.ledger.commit(hold, int(reserved * share)).transaction.id
            except (ReservationClosed, InsufficientTokens):
                return 0
            assert entry_id is not None
            return entry_id

        @rule(hold=consumes(holds))
        def release(self, hold: str) -> None:
            if hold:
                with contextlib.suppress(ReservationClosed):
                    self.ledger.release(hold)

        @rule(spent=spends, amount=st.none() | amounts)
        def refund(self, spent: int, amount: int | None) -> None:
            if spent:
                with contextlib.suppress(InvalidAmount, InvalidInput):
                    self.ledger.refund(spent, amount)

        @rule(user_id=users, limit=st.integers(1, 150), overage=st.none() | st.integers(0, 40))
        def set_limit(self, user_id: str, limit: int, overage: int | None) -> None:
            used = self.ledger.status(user_id).monthly_used
            self.ledger.set_limit(user_id, limit, overage_limit=overage)
            self.usage_when_limits_changed[user_id] = used

        @rule(move=clock_moves)
        def move_clock(self, move: timedelta) -> None:
            self.clock.advance(move)

        @rule()
        def reset_all_stale(self) -> None:
            self.ledger.reset_all_stale(batch_size=1)

        @invariant()
        def balances_are_sound(self) -> None:
            for user_id in USERS:
                account = self.ledger.get_account(user_id)
                status = self.ledger.status(user_id)
                ceiling = account.monthly_limit + account.overage_limit
                assert account.monthly_tokens_used >= 0
                assert status.monthly_used <= max(ceiling, self.usage_when_limits_changed[user_id])
                assert all(grant.remaining >= 0 for grant in account.grants)
                assert status.grant_balance >= 0
                assert status.total_remaining >= 0
            assert self.ledger.reconcile() == []

        @invariant()
        def a_voided_grant_is_never_spent_nor_refunded_into(self) -> None:
            entries = self.ledger.history(limit=1000)
            for entry in entries:
                for grant_id, change in entry.effects.grants:
                    voided_by = self.voided.get(grant_id)
                    if voided_by is not None and entry.id is not None and entry.id > voided_by:
                        raise AssertionError(
                            f"entry #{entry.id} moved {change} of voided {grant_id}"
                        )

        @invariant()
        def rollover_never_carries_more_than_the_cap_nor_the_allowance(self) -> None:
            for entry in self.ledger.history(operation_type=OperationType.RESET, limit=1000):
                carried = entry.operation_context.get("rollover", 0)
                assert 0 <= carried <= MAX_ROLLOVER_CAP
                assert sum(amount for _, amount in entry.effects.grants) == carried

    return LedgerMachine


@pytest.mark.slow
def test_random_operations_keep_every_balance_sound_and_reconciled(
    repository_factory: Callable[[], TokenRepository],
) -> None:
    machine = ledger_machine(repository_factory)
    run_state_machine_as_test(
        machine, settings=settings(max_examples=30, stateful_step_count=25, deadline=None)
    )
