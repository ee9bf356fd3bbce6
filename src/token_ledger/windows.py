"""Caps for windows shorter than the period: at most so many tokens an hour, a day, a week.

A :class:`SpendingWindow` counts what was spent since its start, the start of the
hour, day or week (Monday) that contains the instant, in the account's own zone: a
day in ``Europe/Paris`` starts at midnight in Paris, whatever the ledger's zone. Like
the month, a window starts again lazily: the first write after its end starts the
current one with nothing used (:func:`roll`), and a reader sees it so.

Every deduction and commit must fit every window and is counted in each. A hold
counts against every window while it is held (like the allowance, what is held
cannot be spent), and its commit counts in the window it is committed in; so a
window's use and the tokens held together never pass its cap, and a commit always
fits. A refund gives tokens back to a window only when what it refunds was spent in
that window as it runs now: a refund of yesterday's deduction opens no room today.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any

import attrs

from token_ledger._validation import positive_int
from token_ledger.errors import InvalidInput
from token_ledger.policy import load_zone

__all__ = ["WINDOW_UNITS", "SpendingWindow", "check_window_caps", "decode", "encode", "roll"]

WINDOW_UNITS = ("hour", "day", "week")
"""The windows an account may cap, shortest first."""


def window_start(unit: str, at: datetime, time_zone: str) -> datetime:
    """The start of the ``unit`` containing ``at``, local to ``time_zone``, as UTC.

    A local midnight that a DST change skips is read with the offset before the
    change, as zoneinfo does: the instant of the jump itself.
    """
    local = at.astimezone(load_zone(time_zone))
    if unit == "hour":
        # the fold of a repeated hour is kept: a DST fall-back's two 01:00s are two hours
        return local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)
    day = local.date()
    if unit == "week":
        day -= timedelta(days=day.weekday())
    return _local_midnight(day, local.tzinfo)


def window_end(unit: str, at: datetime, time_zone: str) -> datetime:
    """Where the window containing ``at`` ends: the next one's start (a local day lasts 23
    or 25 hours across a DST change)."""
    start = window_start(unit, at, time_zone)
    if unit == "hour":
        return start + timedelta(hours=1)
    local = start.astimezone(load_zone(time_zone))
    days = 7 if unit == "week" else 1
    return _local_midnight(local.date() + timedelta(days=days), local.tzinfo)


def _local_midnight(day: date, zone: tzinfo | None) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


def _check_unit(_window: object, _attribute: object, value: str) -> None:
    """``value`` is whatever the caller passed: it is checked here, at run time."""
    if value not in WINDOW_UNITS:
        raise InvalidInput(f"a window is one of {', '.join(WINDOW_UNITS)}; got {value!r}")


def _check_cap(_window: object, _attribute: object, value: int) -> None:
    positive_int(value, "a window's cap")


@attrs.frozen
class SpendingWindow:
    """One cap of an account: at most ``cap`` tokens per ``unit``.

    ``used`` is what was spent since ``start``: the start of the window it counts in,
    or, for a window capped while it was running, the instant it was capped (``None``: not
    counted yet). Once that window has ended, it stands for 0.
    """

    unit: str = attrs.field(validator=_check_unit)
    cap: int = attrs.field(validator=_check_cap)
    used: int = 0
    start: datetime | None = None

    def remaining(self, held: int) -> int:
        """What one more deduction may take of this window, ``held`` tokens being held."""
        return max(0, self.cap - self.used - held)

    def rolled(self, now: datetime, time_zone: str) -> SpendingWindow:
        """This window as it runs at ``now``: started again if its window has ended."""
        start = window_start(self.unit, now, time_zone)
        if self.start is not None and start <= self.start:
            return self
        return attrs.evolve(self, used=0, start=start)

    def to_dict(self) -> dict[str, Any]:
        encoded: dict[str, Any] = {"unit": self.unit, "cap": self.cap, "used": self.used}
        if self.start is not None:
            encoded["start"] = self.start.astimezone(timezone.utc).isoformat()
        return encoded


def roll(
    windows: tuple[SpendingWindow, ...], now: datetime, time_zone: str
) -> tuple[SpendingWindow, ...]:
    """The windows as they run at ``now``."""
    return tuple(window.rolled(now, time_zone) for window in windows)


def counted(windows: tuple[SpendingWindow, ...], amount: int) -> tuple[SpendingWindow, ...]:
    """The (rolled) windows with ``amount`` more spent in each."""
    return tuple(attrs.evolve(w, used=w.used + amount) for w in windows)


def given_back(
    windows: tuple[SpendingWindow, ...], amount: int, spent_at: datetime
) -> tuple[SpendingWindow, ...]:
    """The (rolled) windows after a refund of ``amount`` spent at ``spent_at``: each window
    that was running then gets it back (never below nothing used)."""
    return tuple(
        attrs.evolve(w, used=max(0, w.used - amount))
        if w.start is not None and spent_at >= w.start
        else w
        for w in windows
    )


def check_window_caps(value: object) -> dict[str, int]:
    """A mapping of units to caps, as callers pass it: ``{"day": 1000, "hour": 200}``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"window_caps must map {', '.join(WINDOW_UNITS)} to caps, got {value!r}")
    caps: dict[str, int] = {}
    for unit, cap in value.items():
        _check_unit(None, None, unit)  # any key: checked at run time
        caps[unit] = positive_int(cap, f"the {unit} cap")
    return {unit: caps[unit] for unit in WINDOW_UNITS if unit in caps}


def with_caps(
    windows: Iterable[SpendingWindow], caps: Mapping[str, int], now: datetime
) -> tuple[SpendingWindow, ...]:
    """Windows capped at ``caps``, keeping what the windows that stay have used; a new one
    counts from ``now``, so what was spent earlier in its window is neither counted nor
    given back by a refund."""
    kept = {window.unit: window for window in windows}
    return tuple(
        attrs.evolve(kept[unit], cap=cap) if unit in kept else SpendingWindow(unit, cap, 0, now)
        for unit, cap in caps.items()
    )


def in_zone(
    windows: tuple[SpendingWindow, ...], now: datetime, time_zone: str
) -> tuple[SpendingWindow, ...]:
    """The (rolled) windows counted in ``time_zone`` from ``now`` on: each keeps what it
    used, and starts again at the new zone's next boundary rather than at once."""
    return tuple(
        w
        if w.start is None
        else attrs.evolve(w, start=max(w.start, window_start(w.unit, now, time_zone)))
        for w in windows
    )


def encode(windows: tuple[SpendingWindow, ...]) -> str | None:
    """The ``spending_windows`` column: JSON, ``NULL`` for an account without windows."""
    if not windows:
        return None
    return json.dumps([window.to_dict() for window in windows], separators=(",", ":"))


def decode(text: str | None) -> tuple[SpendingWindow, ...]:
    if not text:
        return ()
    return tuple(
        SpendingWindow(
            unit=item["unit"],
            cap=int(item["cap"]),
            used=int(item.get("used", 0)),
            start=datetime.fromisoformat(item["start"]) if item.get("start") else None,
        )
        for item in json.loads(text)
    )
