"""When an allowance starts again: calendar months or per-account anniversaries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from dateutil.relativedelta import relativedelta

from token_ledger import _validation
from token_ledger.errors import InvalidInput, UnknownTimeZone

MAX_PERIOD_MONTHS = 1200
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@attrs.frozen
class Period:
    """A half-open interval ``[start, end)`` of UTC instants."""

    start: datetime
    end: datetime

    def __contains__(self, instant: object) -> bool:
        return isinstance(instant, datetime) and self.start <= instant < self.end


def load_zone(name: object) -> ZoneInfo:
    if not isinstance(name, str):
        raise UnknownTimeZone(f"time zone must be an IANA name such as 'UTC', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise UnknownTimeZone(f"unknown time zone {name!r}") from error


def check_time_zone(_instance: object, _attribute: object, value: object) -> None:
    """The attrs validator of a zone name, for every value that holds one."""
    load_zone(value)


def _check_months(_instance: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"months must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_PERIOD_MONTHS:
        raise InvalidInput(f"months must be between 1 and {MAX_PERIOD_MONTHS}, got {value}")


def _check_rollover_cap(_instance: object, _attribute: object, value: object) -> None:
    _validation.non_negative_int(value, "rollover_cap")


@attrs.frozen
class MonthlyResetPolicy:
    """Computes the allowance period that contains an instant.

    Without an anchor, periods are calendar months (or groups of ``months``
    months counted from January of year 1) starting at local midnight of the
    1st in ``timezone``; the default matches the seed's
    ``DATE_TRUNC('month', CURRENT_DATE)`` on a UTC server. With an anchor,
    period ``n`` starts at ``anchor + relativedelta(months=n * months)`` in
    local wall time, always counted from the anchor itself: stepping from the
    previous (clamped) start would drift from the 31st to the 28th for ever.
    """

    timezone: str = attrs.field(default="UTC", validator=check_time_zone)
    months: int = attrs.field(default=1, validator=_check_months)
    rollover_cap: int = attrs.field(default=0, validator=_check_rollover_cap)
    """The ``rollover_cap`` of accounts opened without one: how much of a period's unspent
    allowance carries into the next (:func:`token_ledger.settling.reset`)."""
    _zone: ZoneInfo = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(lambda self: load_zone(self.timezone), takes_self=True),
    )
    # The calendar period asked for last: nearly every call of a month asks for it again.
    # A one-element list, so that this frozen value can still remember it.
    _last_calendar_period: list[Period] = attrs.field(
        init=False, repr=False, eq=False, factory=lambda: [Period(_EPOCH, _EPOCH)]
    )
    # The same policy in the other zones accounts asked for, each with its own cache.
    _in_zones: dict[str, MonthlyResetPolicy] = attrs.field(
        init=False, repr=False, eq=False, factory=dict
    )

    @property
    def shortest_period(self) -> timedelta:
        """A duration no period is shorter than (months of 28 days, less a DST hour)."""
        return timedelta(days=28 * self.months) - timedelta(hours=2)

    def period(
        self, at: datetime, anchor: datetime | None = None, time_zone: str | None = None
    ) -> Period:
        """Return the period containing ``at``, for an account with ``anchor`` (or none),
        counted in the account's own ``time_zone`` when it has one (see :meth:`in_zone`)."""
        if time_zone is not None and time_zone != self.timezone:
            return self.in_zone(time_zone).period(at, anchor)
        at = _validation.instant(at, "at")
        if anchor is None:
            return self._calendar_period(at)
        return self._anniversary_period(at, _validation.instant(anchor, "anchor"))

    def in_zone(self, time_zone: str) -> MonthlyResetPolicy:
        """This policy for an account in its own IANA ``time_zone``: the same period
        length, with months starting at local midnight there (and anniversaries kept
        in its wall time), whatever zone the rest of the ledger counts in."""
        policy = self._in_zones.get(time_zone)
        if policy is None:
            policy = attrs.evolve(self, timezone=time_zone)
            self._in_zones[time_zone] = policy
        return policy

    def _calendar_period(self, at: datetime) -> Period:
        last = self._last_calendar_period[0]
        if last.start <= at < last.end:
            return last
        local = at.astimezone(self._zone)
        first_month = (local.year * 12 + local.month - 1) // self.months * self.months
        period = Period(
            self._month_start(first_month), self._month_start(first_month + self.months)
        )
        self._last_calendar_period[0] = period
        return period

    def _month_start(self, month_index: int) -> datetime:
        year, month = divmod(month_index, 12)
        return datetime(year, month + 1, 1, tzinfo=self._zone).astimezone(timezone.utc)

    def _anniversary_period(self, at: datetime, anchor: datetime) -> Period:
        local_anchor = anchor.astimezone(self._zone)
        local_at = at.astimezone(self._zone)
        elapsed_months = (local_at.year - local_anchor.year) * 12 + (
            local_at.month - local_anchor.month
        )
        n = elapsed_months // self.months
        while self._nth_start(local_anchor, n) > at:
            n -= 1
        while self._nth_start(local_anchor, n + 1) <= at:
            n += 1
        return Period(self._nth_start(local_anchor, n), self._nth_start(local_anchor, n + 1))

    def _nth_start(self, local_anchor: datetime, n: int) -> datetime:
        return (local_anchor + relativedelta(months=n * self.months)).astimezone(timezone.utc)
