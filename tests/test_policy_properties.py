"""Properties of the reset policy and the domain, over a century, many zones and anchors."""

from __future__ import annotations

import calendar
import contextlib
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta
from hypothesis import given
from hypothesis import strategies as st

from token_ledger import InsufficientTokens, MonthlyResetPolicy, OperationType, TokenLedger
from token_ledger.testing import MovableClock

UTC = timezone.utc
ZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Moscow",
    "America/New_York",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "America/St_Johns",
    "America/Havana",
    "America/Santiago",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Asia/Tehran",
    "Asia/Shanghai",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Australia/Adelaide",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Africa/Casablanca",
    "Atlantic/Azores",
]

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 1), timezones=st.just(UTC)
)
policies = st.builds(
    MonthlyResetPolicy,
    timezone=st.sampled_from(ZONES),
    months=st.sampled_from([1, 1, 1, 2, 3, 6, 12]),
)
anchors = st.one_of(st.none(), instants)


@given(policies, instants, anchors)
def test_periods_contain_their_instant_and_tile_time(
    policy: MonthlyResetPolicy, at: datetime, anchor: datetime | None
) -> None:
    period = policy.period(at, anchor)

    assert at in period
    assert period.end - period.start >= policy.shortest_period
    assert policy.period(period.end, anchor).start == period.end
    assert policy.period(period.start - timedelta(microseconds=1), anchor).end == period.start


@given(st.sampled_from(ZONES), instants)
def test_calendar_periods_start_at_local_midnight_of_the_first(zone: str, at: datetime) -> None:
    period = MonthlyResetPolicy(timezone=zone).period(at)

    local = period.start.astimezone(ZoneInfo(zone))
    assert local.day == 1
    assert (local.hour, local.minute) in {(0, 0), (1, 0)}  # 01:00 where midnight is skipped


@given(
    st.integers(2000, 2090),
    st.integers(1, 12),
    st.integers(1, 31),
    st.integers(0, 23),
    st.sampled_from(ZONES),
)
def test_anniversaries_clamp_to_month_end_without_drift(
    year: int, month: int, day: int, hour: int, zone: str
) -> None:
    day = min(day, calendar.monthrange(year, month)[1])
    anchor = datetime(year, month, day, hour, tzinfo=ZoneInfo(zone))
    policy = MonthlyResetPolicy(timezone=zone)

    at = anchor.astimezone(UTC)
    for n in range(1, 25):
        at = policy.period(at, anchor).end
        local = at.astimezone(ZoneInfo(zone))
        expected = anchor + relativedelta(months=n)
        assert (local.year, local.month, local.day) == (expected.year, expected.month, expected.day)
        assert local.day == min(day, calendar.monthrange(local.year, local.month)[1])


@given(policies, instants, anchors, st.integers(1, 47))
def test_a_year_of_daily_use_resets_exactly_once_per_period(
    policy: MonthlyResetPolicy, start: datetime, anchor: datetime | None, step_hours: int
) -> None:
    clock = MovableClock(start)
    ledger = TokenLedger.memory(policy=policy, clock=clock)
    ledger.open_account("u1", monthly_limit=10**9, reset_anchor=anchor)
    zone = ZoneInfo(policy.timezone)
    end = (start.astimezone(zone) + relativedelta(years=1)).astimezone(UTC)

    while clock() < end:
        ledger.deduct("u1", 1)
        clock.advance(timedelta(hours=step_hours))
    clock.set(end)
    ledger.deduct("u1", 1)

    resets = ledger.history("u1", operation_type=OperationType.RESET, limit=1000)
    assert len(resets) == 12 // policy.months


amounts = st.integers(1, 40)
moves = st.sampled_from(
    [timedelta(0), timedelta(hours=-1), timedelta(hours=5), timedelta(days=3), timedelta(days=40)]
)


@given(policies, instants, anchors, st.lists(st.tuples(moves, amounts), max_size=60))
def test_usage_is_the_sum_of_the_periods_successes_and_never_exceeds_the_limit(
    policy: MonthlyResetPolicy,
    start: datetime,
    anchor: datetime | None,
    steps: list[tuple[timedelta, int]],
) -> None:
    """Clock jumps (back an hour, forward 40 days) never reset twice or lose a deduction."""
    clock = MovableClock(start)
    ledger = TokenLedger.memory(policy=policy, clock=clock)
    ledger.open_account("u1", monthly_limit=100, reset_anchor=anchor)
    period_starts = {ledger.get_account("u1").last_monthly_reset}

    for move, amount in steps:
        clock.advance(move)
        with contextlib.suppress(InsufficientTokens):
            ledger.deduct("u1", amount)
        account = ledger.get_account("u1")
        period_starts.add(account.last_monthly_reset)
        spent = sum(
            entry.amount
            for entry in ledger.history("u1", operation_type="deduct", success=True, limit=1000)
            if entry.id is not None and entry.id > _last_reset_id(ledger)
        )
        assert 0 <= account.monthly_tokens_used <= account.monthly_limit
        assert account.monthly_tokens_used == spent

    resets = ledger.history("u1", operation_type="reset", limit=1000)
    assert len(resets) == len(period_starts) - 1
    assert len({entry.operation_context["period_start"] for entry in resets}) == len(resets)


def _last_reset_id(ledger: TokenLedger) -> int:
    resets = ledger.history("u1", operation_type="reset", limit=1)
    return resets[0].id if resets and resets[0].id is not None else 0
