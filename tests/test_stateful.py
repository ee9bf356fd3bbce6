"""Random mixes of every operation and clock move, on every engine, checked after each step.

The accounts form organisations (trees one to three deep, which members leave and join),
most with hour or day windows; another process's clock, ahead, writes some of them. A
model (``budget_model.py``) follows each budget: the tree, what every account and share
holds, what every window has used, what each budget was charged and is left to refund.
Every spending step is checked against it: it succeeds iff every budget on the member's
path can take it, as each budget's status showed it, and writes the entries the model
expects, on the accounts it expects, and nothing else. After every step, each budget's
status agrees with the model and with itself, nothing is overspent, every window holds
its cap, and reconcile() finds nothing.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from budget_model import Hold, MemberHold, Model, Spend, spendable
from token_ledger import (
    GrantVoided,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    OperationType,
    ReservationClosed,
    ReservationsHeld,
    Threshold,
    TokenLedger,
    TokenStatus,
    Transaction,
)
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock

UTC = timezone.utc
ORGANISATIONS = ("acme", "eng", "ml")
MEMBERS = ("alice", "bob")
LATE = "carol"
"""Opened by a rule, under an organisation that has spent already."""
ZONES = (None, "Pacific/Auckland", "America/Los_Angeles", "Asia/Kathmandu")
MAX_ROLLOVER_CAP = 40
amounts = st.integers(1, 60)
clock_moves = st.sampled_from(
    [
        timedelta(minutes=-30),
        timedelta(minutes=7),
        timedelta(minutes=50),
        timedelta(hours=5),
        timedelta(hours=23),
        timedelta(days=2),
        timedelta(days=11),
        timedelta(days=40),
    ]
)
ttls = st.sampled_from([45, 240]) | st.integers(1, 600)
"""Reservation lifetimes in minutes: a hold of 45 has expired for a clock an hour ahead."""
hour_caps = st.integers(15, 90)
day_caps = st.integers(30, 160)
window_caps = st.none() | st.fixed_dictionaries({}, optional={"hour": hour_caps, "day": day_caps})
opening_caps = st.one_of(
    st.none(),
    st.fixed_dictionaries({"hour": hour_caps}),
    st.fixed_dictionaries({"day": day_caps}),
    st.fixed_dictionaries({"hour": hour_caps, "day": day_caps}),
)
"""Most accounts open with a window: one that does not needs no model of it."""
DEFAULTS = (Threshold(50), Threshold(100), Threshold.nothing_left())
threshold_sets = st.none() | st.lists(
    st.sampled_from([Threshold(30), Threshold(90), Threshold(120), Threshold.nothing_left()]),
    max_size=3,
)
SETTLING = (OperationType.RESET, OperationType.EXPIRE)

Expected = tuple[str, OperationType, "int | None", bool]
"""An entry a step must write: account, operation, amount (``None``: any), success."""


@st.composite
def trees(draw: st.DrawFn) -> dict[str, str | None]:
    """Each account's organisation: members one to three levels below a root, or alone.
    Shrinks towards one organisation over everyone."""
    parents: dict[str, str | None] = {"acme": None}
    parents["eng"] = draw(st.sampled_from(["acme", None]))
    parents["ml"] = draw(st.sampled_from(["acme", "eng", None]))
    for member in MEMBERS:
        parents[member] = draw(st.sampled_from(["acme", "eng", "ml", None]))
    return parents


def reached(threshold: Threshold, status: TokenStatus) -> bool:
    """The domain's rule, restated on what ``status`` shows."""
    if threshold.percent is None:
        return status.total_remaining == 0
    return status.monthly_used * 100 >= threshold.percent * status.monthly_limit


def settling(entry: Transaction) -> bool:
    """An entry of time passing, which any write of the account may add before its own."""
    if entry.operation_type is OperationType.RELEASE:
        return entry.operation_context.get("reason") == "expired"
    return entry.operation_type in SETTLING


def refusal(path: Sequence[str], room: Sequence[int], amount: int) -> str | None:
    """Who refuses ``amount`` on ``path`` (root first), each budget with ``room`` left:
    ``None`` when all can take it, ``""`` the member itself, else the first organisation
    from the root that cannot."""
    if amount > room[-1]:
        return ""
    return next((a for a, left in zip(path[:-1], room[:-1], strict=True) if amount > left), None)


def ledger_machine(make_repository: Callable[[], TokenRepository]) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        accounts = Bundle("accounts")
        holds = Bundle("holds")
        spends = Bundle("spends")
        grants = Bundle("grants")

        def __init__(self) -> None:
            super().__init__()
            self.clock = MovableClock(datetime(2026, 1, 28, 12, tzinfo=UTC))
            self.furthest = self.clock()
            """The latest instant any clock of the ledger has shown."""
            self.ledger = TokenLedger(make_repository(), clock=self.clock, thresholds=DEFAULTS)
            self.model = Model()
            self.usage_excess: dict[str, int] = {}
            """Usage above the limit and overage that a lowered limit left, per account:
            it may stay or fall until a reset, never grow."""
            self.window_excess: dict[tuple[str, str], int] = {}
            """Likewise for a window's use and holds above a lowered cap."""
            self.voided: dict[str, int] = {}
            """Grant id -> the id of the entry that voided it."""
            self.grant_owner: dict[str, str] = {}
            self.own: dict[str, tuple[Threshold, ...] | None] = {}
            self.seen = 0
            self.last_entry_id = 0
            self.unchecked: list[Transaction] = []
            self._statuses: dict[str, TokenStatus] | None = None
            self.watched: tuple[dict[str, TokenStatus], Sequence[str]] | None = None
            self.touched: set[str] = set()

        def teardown(self) -> None:
            self.ledger.close()

        # what the steps share

        def now(self) -> datetime:
            return self.clock()

        def statuses(self) -> dict[str, TokenStatus]:
            """Every account's status as a reader sees it now (read once between writes)."""
            if self._statuses is None:
                self._statuses = {u: self.ledger.status(u) for u in self.model.budgets}
            return self._statuses

        def begin(self, *touched: str) -> dict[str, TokenStatus]:
            """The statuses before a write of ``touched``, whose notifications are checked."""
            before = self.statuses()
            self._statuses = None
            self.touched.update(touched)
            return before

        def watch(self, before: dict[str, TokenStatus], accounts: Sequence[str]) -> None:
            """Expect the step to notify each threshold it took any of ``accounts`` over."""
            self.watched = (before, accounts)

        def take_entries(self) -> list[Transaction]:
            """The entries written since the last call, oldest first."""
            found: list[Transaction] = []
            before_id = None
            while True:
                page = self.ledger.history(limit=100, before_id=before_id)
                fresh = [e for e in page if e.id is not None and e.id > self.last_entry_id]
                found += fresh
                if len(fresh) < len(page) or len(page) < 100:
                    break
                before_id = page[-1].id
            found.reverse()
            if found:
                self.last_entry_id = found[-1].id or 0
            self.unchecked += found
            return found

        def check_step(
            self,
            settled: dict[str, set[str]],
            expected: list[Expected],
            entries: list[Transaction] | None = None,
        ) -> list[Transaction]:
            """Check the step's entries: all made now; entries of time passing only on
            ``settled`` accounts, releasing exactly the holds the model saw expire there; and
            besides them the ``expected`` entries and no other, returned in their order."""
            if entries is None:
                entries = self.take_entries()
            released = set()
            others = []
            for entry in entries:
                assert entry.created_at == self.now(), f"{entry} written at another time"
                if settling(entry):
                    assert entry.user_id in settled, f"{entry} on an account not written"
                    if entry.operation_type is OperationType.RELEASE:
                        released.add((entry.user_id, entry.reference))
                else:
                    others.append(entry)
            expired = {(u, h) for u, holds in settled.items() for h in holds}
            assert released == expired, f"holds written off {released}, expected {expired}"

            matched = []
            for user_id, operation, amount, success in expected:
                found = next(
                    (
                        e
                        for e in others
                        if (e.user_id, e.operation_type, e.success) == (user_id, operation, success)
                        and amount in (None, e.amount)
                    ),
                    None,
                )
                assert found is not None, f"no {operation} of {amount} on {user_id}: {others}"
                others.remove(found)
                matched.append(found)
            assert others == [], f"unexpected entries {others}"
            return matched

        def settle(self, *accounts: str) -> dict[str, set[str]]:
            """The model's accounts written now; the holds each wrote off."""
            return {user_id: self.model.settle(user_id, self.now()) for user_id in accounts}

        def shared(
            self,
            operation: OperationType,
            path: list[str],
            amount: int,
            refused_by: str | None,
            available: int,
            reference: str | None = None,
        ) -> tuple[Transaction, dict[str, int]]:
            """Check a member's spending step on ``path``: on success, the member's entry and
            one share on each organisation, linked to it; on a refusal, one failed entry on
            the member, naming the organisation that refused and what the path had left
            (``available``), and nothing else. The member's entry and the shares' entry ids
            by organisation."""
            member = path[-1]
            expected: list[Expected] = [(member, operation, amount, refused_by is None)]
            if refused_by is None:
                expected += [(org, operation, amount, True) for org in path[:-1]]
            written = path if refused_by is None else path[-1:]  # only who takes a part
            entries = self.check_step(self.settle(*written), expected)
            mine, shares = entries[0], entries[1:]
            assert mine.member_entry_id is None
            if reference is not None:  # a refused hold's entry names the id it would have had
                assert mine.reference == reference
            assert mine.operation_context.get("refused_by") == (refused_by or None)
            if refused_by:
                assert mine.operation_context["available"] == available
            for org, share in zip(path[:-1], shares, strict=False):
                assert share.member_entry_id == mine.id
                assert share.operation_context.get("member") == member
                assert share.created_at == mine.created_at
                if reference is not None:
                    assert share.reference == f"{reference}/{org}"
            return mine, {org: e.id or 0 for org, e in zip(path[:-1], shares, strict=False)}

        def room_before(self, before: dict[str, TokenStatus], path: list[str]) -> list[int]:
            return [before[a].total_remaining for a in path]

        def refused(
            self, error: InsufficientTokens, refused_by: str | None, before: TokenStatus
        ) -> None:
            """A refusal the model expected, naming who refused and what the path had left."""
            assert refused_by is not None, error
            assert error.refused_by == (refused_by or None)
            assert error.remaining == before.available

        # opening

        @initialize(
            target=accounts,
            parents=trees(),
            limits=st.lists(st.integers(30, 200), min_size=3, max_size=3),
            caps=st.lists(opening_caps, min_size=5, max_size=5),
        )
        def open_accounts(
            self,
            parents: dict[str, str | None],
            limits: list[int],
            caps: list[dict[str, int] | None],
        ) -> object:
            users = (*ORGANISATIONS, *MEMBERS)
            for n, user_id in enumerate(users):
                limit = limits[n] if n < len(limits) else 100
                self.open(user_id, limit, parents[user_id], caps[n])
            return multiple(*users)

        def open(
            self, user_id: str, limit: int, parent: str | None, caps: dict[str, int] | None
        ) -> None:
            self.ledger.open_account(
                user_id, monthly_limit=limit, organisation_id=parent, window_caps=caps
            )
            self.model.open(user_id, parent, caps, self.now())
            self.usage_excess[user_id] = 0
            self.own[user_id] = None
            self._statuses = None
            self.touched.add(user_id)
            self.check_step({}, [])

        @precondition(lambda self: LATE not in self.model.budgets)
        @rule(target=accounts, organisation=accounts, caps=window_caps)
        def open_late_member(self, organisation: str, caps: dict[str, int] | None) -> object:
            if self.model.move_refused(LATE, organisation):  # too deep
                with pytest.raises(InvalidInput):
                    self.ledger.open_account(LATE, 100, organisation_id=organisation)
                return multiple()
            self.open(LATE, 100, organisation, caps)
            return LATE

        # spending

        @rule(target=spends, user_id=accounts, amount=amounts)
        def deduct(self, user_id: str, amount: int) -> object:
            path = self.model.path(user_id)
            before = self.begin(*path)
            refused_by = refusal(path, self.room_before(before, path), amount)
            self.watch(before, path)
            try:
                self.ledger.deduct(user_id, amount)
            except InsufficientTokens as refused:
                self.refused(refused, refused_by, before[path[-1]])
            else:
                assert refused_by is None
            entry, shares = self.shared(
                OperationType.DEDUCT, path, amount, refused_by, before[user_id].available
            )
            if refused_by is not None:
                return multiple()
            return self.spent(path, entry, shares)

        def spent(self, path: list[str], entry: Transaction, shares: dict[str, int]) -> int:
            assert entry.id is not None
            for user_id in path:
                self.model.spent(user_id, entry.amount, entry.user_id)
            spend = Spend(entry.id, entry.user_id, entry.amount, entry.created_at, shares)
            self.model.spends[entry.id] = spend
            return entry.id

        @rule(target=holds, user_id=accounts, amount=amounts, minutes=ttls)
        def reserve(self, user_id: str, amount: int, minutes: int) -> object:
            path = self.model.path(user_id)
            before = self.begin(*path)
            refused_by = refusal(path, self.room_before(before, path), amount)
            self.watch(before, path)
            expires_at = self.now() + timedelta(minutes=minutes)
            try:
                hold = self.ledger.reserve(user_id, amount, ttl=timedelta(minutes=minutes))
            except InsufficientTokens as refused:
                self.refused(refused, refused_by, before[user_id])
                hold_id = None
            else:
                assert refused_by is None
                assert hold.expires_at == expires_at
                hold_id = hold.id
            self.shared(
                OperationType.RESERVE, path, amount, refused_by, before[user_id].available, hold_id
            )
            if hold_id is None:
                return multiple()
            self.model.holds[hold_id] = MemberHold(user_id, amount, expires_at)
            self.model.budgets[user_id].holds[hold_id] = Hold(amount, expires_at)
            for org in path[:-1]:
                self.model.budgets[org].holds[f"{hold_id}/{org}"] = Hold(amount, expires_at)
            return hold_id

        def closed(self, hold_id: str) -> bool:
            """Whether the member's hold is no longer held: settled, or past its expiry."""
            member = self.model.holds[hold_id]
            stored = self.model.budgets[member.user_id].holds.get(hold_id)
            return stored is None or stored.expires_at <= self.now()

        @rule(target=spends, hold=consumes(holds), share=st.floats(0, 1))
        def commit(self, hold: str, share: float) -> object:
            held = self.model.holds[hold]
            path = self.model.path(held.user_id)
            before = self.begin(*path)
            actual = int(held.amount * share)
            if self.closed(hold):
                with pytest.raises(ReservationClosed):
                    self.ledger.commit(hold, actual)
                self.check_step({}, [])
                return multiple()
            # each budget releases its share first, or, where a later clock wrote the share
            # off already, spends as a deduction would
            room = [
                spendable(before[org], held.amount)
                if f"{hold}/{org}" in self.model.budgets[org].holds
                else before[org].total_remaining
                for org in path[:-1]
            ]
            room.append(spendable(before[held.user_id], held.amount))
            refused_by = refusal(path, room, actual)
            self.watch(before, path)
            try:
                self.ledger.commit(hold, actual)
            except InsufficientTokens as refused:
                self.refused(refused, refused_by, before[path[-1]])
            else:
                assert refused_by is None
            entry, shares = self.shared(
                OperationType.COMMIT, path, actual, refused_by, before[held.user_id].available, hold
            )
            if refused_by is not None:
                return multiple()  # the hold is still held
            self.drop_hold(hold, path)
            return self.spent(path, entry, shares)

        def drop_hold(self, hold: str, path: list[str]) -> None:
            del self.model.budgets[path[-1]].holds[hold]
            for org in path[:-1]:
                self.model.budgets[org].holds.pop(f"{hold}/{org}", None)

        @rule(hold=consumes(holds))
        def release(self, hold: str) -> None:
            held = self.model.holds[hold]
            path = self.model.path(held.user_id)
            self.begin(*path)
            if self.closed(hold):
                with pytest.raises(ReservationClosed):
                    self.ledger.release(hold)
                self.check_step({}, [])
                return
            # an organisation whose share a clock ahead wrote off takes no part
            sharing = [o for o in path[:-1] if f"{hold}/{o}" in self.model.budgets[o].holds]
            self.ledger.release(hold)
            expected: list[Expected] = [
                (user_id, OperationType.RELEASE, held.amount, True)
                for user_id in (held.user_id, *sharing)
            ]
            mine, *shares = self.check_step(self.settle(held.user_id, *sharing), expected)
            for share in shares:
                assert share.member_entry_id == mine.id
                assert share.reference == f"{hold}/{share.user_id}"
            self.drop_hold(hold, path)

        @rule(spent=spends, amount=st.none() | amounts)
        def refund(self, spent: int, amount: int | None) -> None:
            spend = self.model.spends[spent]
            payers = [*spend.shares, spend.user_id]
            self.begin(*payers)
            if spend.left == 0 or (amount is not None and amount > spend.left):
                with pytest.raises(InvalidAmount):
                    self.ledger.refund(spent, amount)
                self.check_step({}, [])
                return
            given = spend.left if amount is None else amount
            self.ledger.refund(spent, amount)
            expected: list[Expected] = [
                (user_id, OperationType.REFUND, given, True) for user_id in reversed(payers)
            ]
            mine, *shares = self.check_step(self.settle(*payers), expected)
            assert mine.reference == str(spent)
            for share in shares:
                assert share.member_entry_id == mine.id
                assert share.reference == str(spend.shares[share.user_id])
            for user_id in payers:
                self.model.given_back(user_id, given, spend)
            spend.refunded += given

        # grants and limits

        @rule(
            target=grants,
            user_id=accounts,
            amount=amounts,
            days=st.none() | st.integers(1, 45),
            priority=st.integers(-2, 2),
        )
        def grant(self, user_id: str, amount: int, days: int | None, priority: int) -> str:
            self.begin(user_id)
            expires_at = None if days is None else self.now() + timedelta(days=days)
            entry = self.ledger.grant(user_id, amount, expires_at=expires_at, priority=priority)
            assert entry.reference is not None
            self.check_step(self.settle(user_id), [(user_id, OperationType.GRANT, amount, True)])
            self.grant_owner[entry.reference] = user_id
            return entry.reference

        @rule(grant=grants)
        def void_grant(self, grant: str) -> None:
            owner = self.grant_owner[grant]
            before = self.begin(owner)
            self.watch(before, [owner])  # voiding what was left leaves nothing
            try:
                entry = self.ledger.void_grant(grant)
            except GrantVoided:
                assert grant in self.voided
                self.check_step({}, [])
                return
            assert grant not in self.voided
            assert entry.id is not None
            self.voided[grant] = entry.id
            self.check_step(self.settle(owner), [(owner, OperationType.VOID, None, True)])

        @rule(user_id=accounts, cap=st.integers(0, MAX_ROLLOVER_CAP))
        def set_rollover_cap(self, user_id: str, cap: int) -> None:
            self.begin(user_id)
            self.ledger.set_limit(user_id, rollover_cap=cap)
            change: Expected = (user_id, OperationType.LIMIT_CHANGE, None, True)
            self.check_step(self.settle(user_id), [change])

        @rule(user_id=accounts, zone=st.sampled_from(ZONES))
        def set_time_zone(self, user_id: str, zone: str | None) -> None:
            used = self.begin(user_id)[user_id].monthly_used
            assert self.ledger.set_time_zone(user_id, zone).monthly_tokens_used == used
            budget = self.model.budgets[user_id]
            if budget.zone == zone:
                self.check_step({}, [])
                return
            change: Expected = (user_id, OperationType.LIMIT_CHANGE, None, True)
            self.check_step(self.settle(user_id), [change])
            self.model.set_zone(user_id, zone, self.now())

        @rule(user_id=accounts, limit=st.integers(1, 150), overage=st.none() | st.integers(0, 40))
        def set_limit(self, user_id: str, limit: int, overage: int | None) -> None:
            before = self.begin(user_id)
            self.watch(before, [user_id])
            self.ledger.set_limit(user_id, limit, overage_limit=overage)
            change: Expected = (user_id, OperationType.LIMIT_CHANGE, limit, True)
            self.check_step(self.settle(user_id), [change])
            self.usage_excess[user_id] = before[user_id].monthly_used

        @rule(user_id=accounts, caps=window_caps)
        def set_window_caps(self, user_id: str, caps: dict[str, int] | None) -> None:
            before = self.begin(user_id)
            self.watch(before, [user_id])  # a cap lowered to what is used leaves nothing
            self.ledger.set_window_caps(user_id, caps)
            settled = self.settle(user_id)
            changed = self.model.set_caps(user_id, caps or {}, self.now())
            change: Expected = (user_id, OperationType.LIMIT_CHANGE, None, True)
            self.check_step(settled, [change] if changed else [])
            # a lowered cap may leave a window over it, which may then only fall
            held = before[user_id].reserved
            for unit, window in self.model.budgets[user_id].windows.items():
                self.window_excess[user_id, unit] = max(window.cap, window.used + held)

        @rule(user_id=accounts, thresholds=threshold_sets)
        def set_thresholds(self, user_id: str, thresholds: list[Threshold] | None) -> None:
            before = self.begin(user_id)
            self.watch(before, [user_id])  # setting thresholds crosses none
            account = self.ledger.set_thresholds(user_id, thresholds)
            self.own[user_id] = account.thresholds
            self.check_step(self.settle(user_id), [])

        # organisations

        @rule(user_id=accounts, organisation=accounts, alone=st.sampled_from([False, False, True]))
        def move_to_organisation(self, user_id: str, organisation: str, alone: bool) -> None:
            target = None if alone else organisation
            self.begin(user_id)
            budget = self.model.budgets[user_id]
            if self.model.move_refused(user_id, target):
                with pytest.raises(InvalidInput):
                    self.ledger.move_to_organisation(user_id, target)
                self.check_step({}, [])
            elif budget.parent == target:
                assert self.ledger.move_to_organisation(user_id, target).organisation_id == target
                self.check_step({}, [])
            elif budget.holds_any(self.now()):
                with pytest.raises(ReservationsHeld):
                    self.ledger.move_to_organisation(user_id, target)
                self.check_step({}, [])
            else:
                assert self.ledger.move_to_organisation(user_id, target).organisation_id == target
                change: Expected = (user_id, OperationType.LIMIT_CHANGE, None, True)
                self.check_step(self.settle(user_id), [change])
                budget.parent = target

        # time

        @rule(move=clock_moves)
        def move_clock(self, move: timedelta) -> None:
            self.begin()
            self.furthest = max(self.furthest, self.clock.advance(move))

        @rule(user_id=accounts, ahead=st.sampled_from([timedelta(hours=1), timedelta(days=31)]))
        def settle_with_a_clock_ahead(self, user_id: str, ahead: timedelta) -> None:
            """Another process, whose clock is ``ahead``, writes the account: what that clock
            saw end (a period, a window, a hold) stays ended when this clock reaches it."""
            self.begin(user_id)
            self.furthest = max(self.furthest, self.clock.advance(ahead))
            try:
                self.ledger.reset_if_needed(user_id)
                self.check_step(self.settle(user_id), [])
            finally:
                self.clock.advance(-ahead)

        @rule()
        def reset_all_stale(self) -> None:
            self.begin()
            self.ledger.reset_all_stale(batch_size=1)
            entries = self.take_entries()
            written = {entry.user_id for entry in entries}
            self.touched.update(written)
            self.check_step(self.settle(*written), [], entries)

        # after every step

        def check(self) -> None:
            """Every invariant, as after each step: for the replays below."""
            self.budgets_are_sound()
            self.each_crossing_is_notified_once()
            self.entries_spend_no_voided_grant_and_roll_over_within_the_cap()
            self.notifications_are_never_duplicated()

        @invariant()
        def budgets_are_sound(self) -> None:
            now = self.now()
            statuses = self.statuses()
            for user_id, status in statuses.items():
                budget = self.model.budgets[user_id]
                above = [statuses[org].total_remaining for org in self.model.path(user_id)[:-1]]
                assert status.organisation_id == budget.parent
                # the period contains now, or the instant of a later write (a clock ahead)
                assert status.period_start <= self.furthest
                assert now < status.next_reset
                assert status.organisation_remaining == (min(above) if above else None)
                assert status.available == min([status.total_remaining, *above])
                assert status.total_remaining == spendable(status)
                assert status.reserved == budget.held(now)
                shown = {w.unit: (w.cap, w.used, w.resets_at) for w in status.windows}
                assert shown == self.model.windows_at(user_id, now)
                for window in status.windows:
                    assert window.remaining == max(0, window.cap - window.used - status.reserved)
                    key = (user_id, window.unit)
                    load = window.used + status.reserved
                    ceiling = max(window.cap, self.window_excess.get(key, 0))
                    assert load <= ceiling, f"{window} with {status.reserved} held"
                    self.window_excess[key] = min(ceiling, load)
                ceiling = max(
                    status.monthly_limit + status.overage_limit, self.usage_excess[user_id]
                )
                assert 0 <= status.monthly_used <= ceiling
                self.usage_excess[user_id] = min(ceiling, status.monthly_used)
                assert status.grant_balance >= 0
            for user_id in sorted(self.touched):
                account = self.ledger.get_account(user_id)
                assert account.monthly_tokens_used >= 0
                assert all(grant.remaining >= 0 for grant in account.grants)
                self.check_charges(user_id)
            self.touched = set()
            assert self.ledger.reconcile() == []

        def check_charges(self, user_id: str) -> None:
            """What the budget paid, by member, and what the account spent itself, as the
            usage reports add them up."""
            budget = self.model.budgets[user_id]
            report = self.ledger.usage(organisation=user_id, by="user")
            paid = Counter({row.user_id: row.tokens for row in report})
            assert +paid == +budget.charged, (user_id, paid, budget.charged)
            assert self.ledger.usage(user_id=user_id).total == budget.own

        @invariant()
        def each_crossing_is_notified_once(self) -> None:
            expected = []
            if self.watched is not None:
                before, accounts = self.watched
                after = self.statuses()
                for user_id in accounts:
                    own = self.own[user_id]
                    for threshold in DEFAULTS if own is None else own:
                        if reached(threshold, after[user_id]) and (
                            not reached(threshold, before[user_id])
                            or after[user_id].period_start != before[user_id].period_start
                        ):
                            expected.append((user_id, threshold.key))
                self.watched = None
            new = self.ledger.notifications(after=self.seen, limit=1000)
            notified = sorted((n.user_id, n.threshold.key) for n in new)
            assert notified == sorted(expected)
            if new:
                self.seen = new[-1].id or 0

        @invariant()
        def entries_spend_no_voided_grant_and_roll_over_within_the_cap(self) -> None:
            self.take_entries()
            for entry in self.unchecked:
                for grant_id, change in entry.effects.grants:
                    voided_by = self.voided.get(grant_id)
                    if voided_by is not None and entry.id is not None and entry.id > voided_by:
                        raise AssertionError(
                            f"entry #{entry.id} moved {change} of voided {grant_id}"
                        )
                if entry.operation_type is OperationType.RESET:
                    carried = entry.operation_context.get("rollover", 0)
                    assert 0 <= carried <= MAX_ROLLOVER_CAP
                    assert sum(amount for _, amount in entry.effects.grants) == carried
            self.unchecked = []

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
        machine, settings=settings(max_examples=40, stateful_step_count=50, deadline=None)
    )


# Failures the machine found, replayed step by step (each step followed by every invariant).


@contextlib.contextmanager
def replay(
    repository_factory: Callable[[], TokenRepository], **parents: str | None
) -> Iterator[Any]:
    """The machine with its accounts open, all under acme but for ``parents``, no windows."""
    state = ledger_machine(repository_factory)()
    try:
        tree = {**dict.fromkeys((*ORGANISATIONS, *MEMBERS), "acme"), "acme": None, **parents}
        state.open_accounts(parents=tree, limits=[100, 100, 100], caps=[None] * 5)
        state.check()
        yield state
    finally:
        state.teardown()


def step(state: Any, rule: str, **arguments: Any) -> Any:
    result = getattr(state, rule)(**arguments)
    state.check()
    return result


def test_a_member_releases_a_hold_whose_share_a_clock_ahead_wrote_off(
    repository_factory: Callable[[], TokenRepository],
) -> None:
    """A release whose share is gone takes no part of the organisation (it used to answer
    the organisation's settled account, without entries, whose last entry was then read)."""
    with replay(repository_factory) as state:
        hold = step(state, "reserve", user_id="alice", amount=10, minutes=45)
        step(state, "settle_with_a_clock_ahead", user_id="acme", ahead=timedelta(hours=1))
        step(state, "release", hold=hold)


def test_a_refund_after_a_change_of_zone_gives_nothing_back_to_a_reset_period(
    repository_factory: Callable[[], TokenRepository],
) -> None:
    """Just after a UTC month began, a change to a zone still in the last month starts the
    period where the new zone's began, before the reset; a refund of a deduction made in
    between gave all its tokens back to usage that the reset had already taken them from:
    -44."""
    with replay(repository_factory, alice=None) as state:
        spent = step(state, "deduct", user_id="alice", amount=44)
        for move in (timedelta(days=2), timedelta(hours=23), *[timedelta(hours=5)] * 3):
            step(state, "move_clock", move=move)  # 2026-02-01 02:00 UTC
        step(state, "reset_all_stale")
        step(state, "set_time_zone", user_id="alice", zone="America/Los_Angeles")
        step(state, "refund", spent=spent, amount=None)


def test_a_commit_spent_as_a_deduction_is_stamped_like_every_write(
    repository_factory: Callable[[], TokenRepository],
) -> None:
    """A commit whose share a clock ahead wrote off is spent from the organisation as a
    deduction would be, and stamped like every write (it was not: its row kept its
    updated_at, and the optional SQL's trigger reset it at the database's clock)."""
    with replay(repository_factory) as state:
        hold = step(state, "reserve", user_id="bob", amount=10, minutes=45)
        step(state, "settle_with_a_clock_ahead", user_id="acme", ahead=timedelta(hours=1))
        step(state, "deduct", user_id="acme", amount=5)
        step(state, "commit", hold=hold, share=0.7)
