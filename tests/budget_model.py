"""A model of the ledger's budgets for the state machine of ``test_stateful.py``.

Exact where the rules are simple: who belongs to which organisation, what each
budget holds, what each window has used, what each budget was charged, what is
left to refund of each spending. Where they are intricate (the spending order of
grants, rollover, resets) the machine reads the ledger and checks it against the
entries instead, as it did before organisations.

The model mirrors what is *stored*, settling a budget (its windows started again,
its expired holds written off) only where the ledger writes it: with a clock that
steps back, a window or a hold that a write has settled stays settled, and one no
write touched comes back, so the model must know which writes touched which budget.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from token_ledger import TokenStatus
from token_ledger.organisations import MAX_DEPTH

UTC = timezone.utc


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def window_start(unit: str, at: datetime, zone: str) -> datetime:
    """The start of the local hour or day containing ``at``, restated: an hour starts
    where the local clock shows a whole hour (Kathmandu's at a quarter past, in UTC)."""
    local = at.astimezone(ZoneInfo(zone))
    if unit == "hour":
        return at.astimezone(UTC) - timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
    assert unit == "day"
    return _midnight(local.date(), ZoneInfo(zone))


def window_end(unit: str, at: datetime, zone: str) -> datetime:
    """The end of the local hour or day containing ``at``."""
    if unit == "hour":
        return window_start(unit, at, zone) + timedelta(hours=1)
    local = at.astimezone(ZoneInfo(zone))
    return _midnight(local.date() + timedelta(days=1), ZoneInfo(zone))


def spendable(status: TokenStatus, released: int = 0) -> int:
    """What one more deduction may take of the budget ``status`` shows, with ``released``
    of its holds given back first (a commit spends after releasing its hold): allowance,
    grants and overage left, less holds, and no more than any window has left."""
    held = status.reserved - released
    overage_left = max(0, status.overage_limit - status.overage_used)
    room = status.monthly_remaining + status.grant_balance + overage_left - held
    for window in status.windows:
        room = min(room, max(0, window.cap - window.used - held))
    return max(0, room)


@dataclass
class Window:
    cap: int
    start: datetime
    """Since when ``used`` counts, as stored: the start of its window, or the instant the
    window was capped (or its account opened) when that was later."""
    used: int = 0

    def at(self, unit: str, now: datetime, zone: str) -> tuple[datetime, int]:
        """The window as it runs at ``now``: started again once its window has ended."""
        begins = window_start(unit, now, zone)
        if begins > self.start:
            return begins, 0
        return self.start, self.used


@dataclass
class Hold:
    amount: int
    expires_at: datetime


@dataclass
class Budget:
    """One account's budget, as stored."""

    user_id: str
    parent: str | None
    zone: str | None = None
    windows: dict[str, Window] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    """Its own holds and its shares of its members' (``<hold id>/<its id>``)."""
    own: int = 0
    """Net tokens of its own deductions and commits, less their refunds."""
    charged: Counter[str] = field(default_factory=Counter)
    """Net tokens its budget paid, by the member that spent them (itself for its own)."""

    @property
    def calendar_zone(self) -> str:
        return self.zone or "UTC"

    def held(self, now: datetime) -> int:
        return sum(hold.amount for hold in self.holds.values() if now < hold.expires_at)

    def holds_any(self, now: datetime) -> bool:
        return any(now < hold.expires_at for hold in self.holds.values())


@dataclass
class Spend:
    """A member's successful deduction or commit, and what each budget above it was charged."""

    entry_id: int
    user_id: str
    amount: int
    created_at: datetime
    shares: dict[str, int]
    """The organisations that paid a share, root first, each with its share's entry id."""
    refunded: int = 0

    @property
    def left(self) -> int:
        return self.amount - self.refunded


@dataclass
class MemberHold:
    user_id: str
    amount: int
    expires_at: datetime


class Model:
    def __init__(self) -> None:
        self.budgets: dict[str, Budget] = {}
        self.holds: dict[str, MemberHold] = {}
        """Reservation id -> the member's hold (its shares are on the organisations)."""
        self.spends: dict[int, Spend] = {}

    # the tree

    def open(
        self, user_id: str, parent: str | None, caps: dict[str, int] | None, now: datetime
    ) -> None:
        """A new account: its windows count from ``now``."""
        assert user_id not in self.budgets
        windows = {unit: Window(cap, now) for unit, cap in (caps or {}).items()}
        self.budgets[user_id] = Budget(user_id, parent, windows=windows)

    def path(self, user_id: str) -> list[str]:
        """The account and the organisations above it, root first."""
        path = [user_id]
        parent = self.budgets[user_id].parent
        while parent is not None:
            path.insert(0, parent)
            parent = self.budgets[parent].parent
        assert len(path) <= MAX_DEPTH
        return path

    def height_below(self, user_id: str) -> int:
        below = [b.user_id for b in self.budgets.values() if b.parent == user_id]
        return max((1 + self.height_below(member) for member in below), default=0)

    def move_refused(self, user_id: str, organisation_id: str | None) -> bool:
        """Whether the move would make a cycle or a path past ``MAX_DEPTH`` accounts."""
        if organisation_id is None:
            return False
        above = self.path(organisation_id)
        return user_id in above or len(above) + 1 + self.height_below(user_id) > MAX_DEPTH

    # time

    def settle(self, user_id: str, now: datetime) -> set[str]:
        """A write of the budget at ``now``: its windows run as they do at ``now`` and its
        expired holds are written off. The ids of the holds written off."""
        budget = self.budgets[user_id]
        for unit, window in budget.windows.items():
            window.start, window.used = window.at(unit, now, budget.calendar_zone)
        expired = {hold_id for hold_id, hold in budget.holds.items() if hold.expires_at <= now}
        for hold_id in expired:
            del budget.holds[hold_id]
        return expired

    def windows_at(self, user_id: str, now: datetime) -> dict[str, tuple[int, int, datetime]]:
        """Each window as a reader sees it at ``now``: cap, used, and when it ends."""
        budget = self.budgets[user_id]
        shown = {}
        for unit, window in budget.windows.items():
            start, used = window.at(unit, now, budget.calendar_zone)
            shown[unit] = (window.cap, used, window_end(unit, start, budget.calendar_zone))
        return shown

    def set_caps(self, user_id: str, caps: dict[str, int], now: datetime) -> bool:
        """Cap the windows of a settled budget; whether anything changed. A window that
        stays keeps its use; a new one counts from now: what was spent earlier in its
        window is neither counted nor given back."""
        budget = self.budgets[user_id]
        before = {unit: window.cap for unit, window in budget.windows.items()}
        kept = budget.windows
        budget.windows = {
            unit: Window(cap, kept[unit].start, kept[unit].used)
            if unit in kept
            else Window(cap, now)
            for unit, cap in caps.items()
        }
        return before != caps

    def set_zone(self, user_id: str, zone: str | None, now: datetime) -> None:
        """Count a settled budget's windows in ``zone`` from now: each keeps its use until
        the new zone's next boundary."""
        budget = self.budgets[user_id]
        budget.zone = zone
        for unit, window in budget.windows.items():
            window.start = max(window.start, window_start(unit, now, budget.calendar_zone))

    # spending

    def spent(self, user_id: str, amount: int, member: str) -> None:
        """``amount`` spent on ``user_id``'s (settled) budget for ``member``."""
        budget = self.budgets[user_id]
        for window in budget.windows.values():
            window.used += amount
        budget.charged[member] += amount
        if user_id == member:
            budget.own += amount

    def given_back(self, user_id: str, amount: int, spend: Spend) -> None:
        """A refund of ``amount`` of ``spend`` on the (settled) budget of ``user_id``: its
        windows get it back only if ``spend`` was made in the window as it runs now."""
        budget = self.budgets[user_id]
        for window in budget.windows.values():
            if spend.created_at >= window.start:
                window.used = max(0, window.used - amount)
        budget.charged[spend.user_id] -= amount
        if user_id == spend.user_id:
            budget.own -= amount
