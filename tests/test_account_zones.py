"""An account in a zone of its own, under a ledger counting in another: over a century, all
31 anchor days, two dozen zones, and the folds and gaps of their clock changes."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta
from hypothesis import given
from hypothesis import strategies as st

from test_policy_properties import ZONES, instants
from token_ledger import MonthlyResetPolicy, OperationType, TokenLedger
from token_ledger.testing import MovableClock

UTC = timezone.utc
zones = st.sampled_from(ZONES)
months = st.sampled_from([1, 1, 1, 2, 3, 12])


@st.composite
def local_anchors(draw: st.DrawFn, zone: str) -> datetime:
    """A wall time in ``zone`` on any of the 31 days, either side of a fold (``fold=1``)."""
    year = draw(st.integers(2000, 2099))
    month = draw(st.integers(1, 12))
    day = min(draw(st.integers(1, 31)), calendar.monthrange(year, month)[1])
    hour = draw(st.sampled_from([0, 1, 2, 3, 12, 23]))
    minute = draw(st.sampled_from([0, 30, 59]))
    fold = draw(st.integers(0, 1))
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold)


@given(zones, zones, months, instants, st.data())
def test_an_accounts_periods_are_those_of_a_ledger_in_its_zone(
    ledger_zone: str, account_zone: str, length: int, at: datetime, data: st.DataObject
) -> None:
    anchor = data.draw(st.none() | local_anchors(account_zone))
    policy = MonthlyResetPolicy(timezone=ledger_zone, months=length)
    own = MonthlyResetPolicy(timezone=account_zone, months=length)

    period = policy.period(at, anchor, account_zone)

    assert period == own.period(at, anchor)
    assert at in period
    assert policy.period(period.end, anchor, account_zone).start == period.end
    if anchor is None:
        local = period.start.astimezone(ZoneInfo(account_zone))
        assert local.day == 1
        assert (local.month - 1) % length == 0


@given(zones, zones, st.data())
def test_anniversaries_in_the_accounts_zone_keep_their_day_for_two_years(
    ledger_zone: str, account_zone: str, data: st.DataObject
) -> None:
    anchor = data.draw(local_anchors(account_zone))
    policy = MonthlyResetPolicy(timezone=ledger_zone)
    day = anchor.day

    at = anchor.astimezone(UTC)
    for n in range(1, 25):
        at = policy.period(at, anchor, account_zone).end
        local = at.astimezone(ZoneInfo(account_zone))
        expected = anchor + relativedelta(months=n)
        assert (local.year, local.month) == (expected.year, expected.month)
        assert local.day == min(day, calendar.monthrange(local.year, local.month)[1])


@given(zones, zones, instants, st.integers(5, 71))
def test_an_account_in_its_own_zone_resets_once_per_local_month(
    ledger_zone: str, account_zone: str, start: datetime, step_hours: int
) -> None:
    clock = MovableClock(start)
    ledger = TokenLedger.memory(policy=MonthlyResetPolicy(timezone=ledger_zone), clock=clock)
    ledger.open_account("u1", monthly_limit=10**9, time_zone=account_zone)
    local = ZoneInfo(account_zone)
    end = (start.astimezone(local) + relativedelta(months=6)).astimezone(UTC)

    seen = set()
    while clock() < end:
        ledger.deduct("u1", 1)
        now = clock().astimezone(local)
        seen.add((now.year, now.month))
        # in UTC: an ambiguous wall time (Havana's midnight of a November) is unequal to
        # every instant of another zone, by PEP 495's rule for comparisons across zones
        first = datetime(now.year, now.month, 1, tzinfo=local).astimezone(UTC)
        assert ledger.get_account("u1").last_monthly_reset == first
        clock.advance(timedelta(hours=step_hours))

    resets = ledger.history("u1", operation_type=OperationType.RESET, limit=1000)
    assert len(resets) == len(seen) - 1
    assert ledger.reconcile() == []


@given(zones, zones, instants, st.integers(0, 200))
def test_a_change_of_zone_never_resets_nor_loses_usage(
    first_zone: str, second_zone: str, at: datetime, used: int
) -> None:
    clock = MovableClock(at)
    ledger = TokenLedger.memory(clock=clock)
    ledger.open_account("u1", monthly_limit=200, time_zone=first_zone)
    if used:
        ledger.deduct("u1", used)

    moved = ledger.set_time_zone("u1", second_zone)

    assert moved.monthly_tokens_used == used
    assert ledger.history("u1", operation_type="reset") == []
    assert ledger.status("u1").period_start <= at < ledger.status("u1").next_reset
    local = ledger.status("u1").next_reset.astimezone(ZoneInfo(second_zone))
    assert (local.day, local.hour in (0, 1)) == (1, True)
    assert ledger.reconcile() == []
