"""Random mixes of every operation and clock move, on every engine, checked after each step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
    Threshold,
    TokenLedger,
    TokenStatus,
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
DEFAULTS = (Threshold(50), Threshold(100), Threshold.nothing_left())
threshold_sets = st.none() | st.lists(
    st.sampled_from([Threshold(30), Threshold(90), Threshold(120), Threshold.nothing_left()]),
    max_size=3,
)


def reached(threshold: Threshold, status: TokenStatus) -> bool:
    """The domain's rule, restated on what ``status`` shows."""
    if threshold.percent is None:
        return status.total_remaining == 0
    return status.monthly_used * 100 >= threshold.percent * status.monthly_limit


def ledger_machine(make_repository: Callable[[], TokenRepository]) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        spends = Bundle("spends")
        grants = Bundle("grants")

        def __init__(self) -> None:
            super().__init__()
            self.clock = MovableClock(datetime(2026, 1, 28, 12, tzinfo=UTC))
            self.ledger = TokenLedger(make_repository(), clock=self.clock, thresholds=DEFAULTS)
            self.usage_when_limits_changed = dict.fromkeys(USERS, 0)
            self.voided: dict[str, int] = {}
            """Grant id -> the id of the entry that voided it."""
            self.own: dict[str, tuple[Threshold, ...] | None] = dict.fromkeys(USERS)
            self.seen = 0
            for user_id in USERS:
                self.ledger.open_account(user_id, monthly_limit=100)

        @contextlib.contextmanager
        def crossing(self, user_id: str) -> Iterator[None]:
            """Check that the write in the block records one notification for each threshold
            it took ``user_id`` over, and none else: before and after, as a reader sees it."""
            before = self.ledger.status(user_id)
            try:
                yield
            finally:
                after = self.ledger.status(user_id)
                thresholds = DEFAULTS if self.own[user_id] is None else self.own[user_id]
                assert thresholds is not None
                expected = [
                    t.key
                    for t in thresholds
                    if reached(t, after)
                    and (not reached(t, before) or after.period_start != before.period_start)
                ]
                new = self.ledger.notifications(after=self.seen, limit=1000)
                assert [(n.user_id, n.threshold.key) for n in new] == [
                    (user_id, key) for key in expected
                ]
                if new:
                    self.seen = new[-1].id or 0

        def teardown(self) -> None:
            self.ledger.close()

        @rule(target=spends, user_id=users, amount=amounts)
        def deduct(self, user_id: str, amount: int) -> int:
            try:
                with self.crossing(user_id):
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
                with self.crossing(user_id):
                    return self.ledger.reserve(user_id, amount, ttl=timedelta(minutes=minutes)).id
            except InsufficientTokens:
                return ""

        @rule(target=spends, hold=consumes(holds), share=st.floats(0, 1))
        def commit(self, hold: str, share: float) -> int:
            if not hold:
                return 0
            reserved = self.ledger.history(reference=hold, operation_type="reserve")[0]
            try:
                with self.crossing(reserved.user_id):
                    entry_id = self.ledger.commit(hold, int(reserved.amount * share)).transaction.id
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
            with self.crossing(user_id):
                self.ledger.set_limit(user_id, limit, overage_limit=overage)
            self.usage_when_limits_changed[user_id] = used

        @rule(user_id=users, thresholds=threshold_sets)
        def set_thresholds(self, user_id: str, thresholds: list[Threshold] | None) -> None:
            with self.crossing(user_id):  # setting thresholds crosses none
                account = self.ledger.set_thresholds(user_id, thresholds)
                self.own[user_id] = account.thresholds

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

        @invariant()
        def notifications_are_never_duplicated(self) -> None:
            """Ids rise, and each crossing of a threshold in a period has its own occurrence."""
            notes = self.ledger.notifications(limit=1000)
            ids = [n.id for n in notes]
            assert ids == sorted(ids)
            assert len(set(ids)) == len(ids)
            keys = [(n.user_id, n.threshold, n.period_start, n.occurrence) for n in notes]
            assert len(set(keys)) == len(keys)
            for note in notes:
                earlier = [
                    k for k in keys if k[:3] == (note.user_id, note.threshold, note.period_start)
                ]
                assert sorted(k[3] for k in earlier) == list(range(1, len(earlier) + 1))

    return LedgerMachine


@pytest.mark.slow
def test_random_operations_keep_every_balance_sound_and_reconciled(
    repository_factory: Callable[[], TokenRepository],
) -> None:
    machine = ledger_machine(repository_factory)
    run_state_machine_as_test(
        machine, settings=settings(max_examples=30, stateful_step_count=25, deadline=None)
    )
