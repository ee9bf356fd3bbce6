"""Hypothesis strategies for property tests of code that uses token-ledger.

This is the one module of token-ledger that needs hypothesis
(``pip install hypothesis``). The values lean towards where allowance bugs
live: instants next to month boundaries, anchors on the 28th to the 31st,
time zones whose midnight is odd or missing, clock moves to just before and
just after a user's next reset, jumps across several periods, small steps
back, and limits small enough to run out in a few deductions.

A property of your own code, across month ends, in a few lines:

>>> from hypothesis import given
>>> from token_ledger import TokenLedger
>>> from token_ledger.testing.strategies import scenarios
>>> @given(scenarios())
... def test_remaining_stays_within_the_limit(scenario):
...     ledger, clock = scenario.open_ledger()
...     for operation in scenario.operations:
...         operation.apply(ledger, clock)  # or: match operation, call your code
...         for account in scenario.accounts:
...             status = ledger.status(account.user_id)
...             assert 0 <= status.monthly_remaining <= status.monthly_limit
>>> test_remaining_stays_within_the_limit()
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from token_ledger import _validation
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.testing import MovableClock
from token_ledger.testing.operations import (
    AccountSpec,
    Deduct,
    MoveClock,
    MoveToReset,
    Operation,
    ResetAllStale,
    ResetIfNeeded,
    Scenario,
    SetLimit,
)

UTC = timezone.utc
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 12, 31, tzinfo=UTC)
MAX_TOKENS = _validation.INT64_MAX

TIMEZONES = (
    "UTC",
    "Europe/Berlin",  # DST at 02:00: the common case outside UTC
    "America/New_York",
    "Asia/Kolkata",  # a half-hour offset
    "Asia/Kathmandu",  # a 45-minute offset
    "Australia/Lord_Howe",  # a half-hour DST shift
    "Pacific/Chatham",  # +12:45/+13:45
    "Pacific/Kiritimati",  # +14: months start a day before UTC's
    "America/Santiago",  # DST starts at midnight: some months begin at 01:00
    "America/Havana",  # likewise
    "Pacific/Apia",  # skipped 2011-12-30 entirely
)
"""Zones :func:`policies` draws from: each one has broken someone's month arithmetic."""

FEATURES = ("literature_search", "chat")
IDEMPOTENCY_KEYS = ("request-1", "request-2", "request-3")
"""A small pool, so generated deductions retry (and conflict) with each other."""


def instants(
    min_value: datetime = EARLIEST, max_value: datetime = LATEST
) -> st.SearchStrategy[datetime]:
    """Aware UTC datetimes; half of them within 15 hours of a UTC month boundary.

    Fifteen hours either side covers local midnight of the 1st in every time zone.

    >>> from hypothesis import given
    >>> @given(instants())
    ... def test_period_contains_its_instant(at):
    ...     assert at in MonthlyResetPolicy().period(at)
    >>> test_period_contains_its_instant()
    """
    low = _validation.instant(min_value, "min_value")
    high = _validation.instant(max_value, "max_value")
    if low > high:
        raise InvalidArgument(f"min_value {low} is after max_value {high}")
    anywhere = st.datetimes(
        low.replace(tzinfo=None), high.replace(tzinfo=None), timezones=st.just(UTC)
    )
    near_boundaries = st.builds(
        _near_month_start,
        st.integers(low.year, high.year),
        st.integers(1, 12),
        st.timedeltas(-timedelta(hours=15), timedelta(hours=15)),
    ).map(lambda at: min(max(at, low), high))
    return st.one_of(anywhere, near_boundaries)


def _near_month_start(year: int, month: int, offset: timedelta) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC) + offset


def anchors() -> st.SearchStrategy[datetime | None]:
    """``reset_anchor`` values: ``None`` (calendar months) or an instant, often on the 28th-31st.

    Anchors late in the month are where anniversaries clamp (Jan 31 -> Feb 28)
    and where stepping from the clamped date drifts.

    >>> from hypothesis import given
    >>> @given(anchors())
    ... def test_anniversaries_tile_time(anchor):
    ...     period = MonthlyResetPolicy().period(datetime(2026, 3, 1, tzinfo=UTC), anchor)
    ...     assert MonthlyResetPolicy().period(period.end, anchor).start == period.end
    >>> test_anniversaries_tile_time()
    """
    month_ends = st.builds(
        _late_in_month, instants(), st.integers(28, 31), st.timedeltas(timedelta(0), timedelta(1))
    )
    return st.one_of(st.none(), instants(), month_ends)


def _late_in_month(at: datetime, day: int, time_of_day: timedelta) -> datetime:
    last = calendar.monthrange(at.year, at.month)[1]
    return datetime(at.year, at.month, min(day, last), tzinfo=UTC) + time_of_day


def policies(
    timezones: Sequence[str] = TIMEZONES, months: Sequence[int] = (1, 2, 3, 6, 12)
) -> st.SearchStrategy[MonthlyResetPolicy]:
    """Reset policies; failing examples shrink towards calendar months in UTC.

    >>> from hypothesis import given
    >>> from zoneinfo import ZoneInfo
    >>> @given(policies(months=[1]))
    ... def test_monthly_periods_start_on_the_first(policy):
    ...     start = policy.period(datetime(2026, 5, 17, tzinfo=UTC)).start
    ...     assert start.astimezone(ZoneInfo(policy.timezone)).day == 1
    >>> test_monthly_periods_start_on_the_first()
    """
    return st.builds(
        MonthlyResetPolicy, timezone=st.sampled_from(timezones), months=st.sampled_from(months)
    )


def user_ids() -> st.SearchStrategy[str]:
    """Valid user ids, including quotes, emoji and right-to-left text.

    Such ids find the code that builds SQL, HTML or log lines by hand.

    >>> from hypothesis import given
    >>> from token_ledger import TokenLedger
    >>> @given(user_ids())
    ... def test_any_user_can_open_an_account(user_id):
    ...     TokenLedger.memory().open_account(user_id, monthly_limit=50)
    >>> test_any_user_can_open_an_account()
    """
    characters = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(characters, min_size=1, max_size=40).filter(str.strip)


def monthly_limits() -> st.SearchStrategy[int]:
    """Limits of 1 to 10, so that a few generated deductions use most of an allowance.

    Small numbers find reset bugs: a bug that needs a user to run low twice
    in two periods shows up in a run of 100 examples far more often with
    limits up to 10 than up to 100. For the extremes, pass
    ``monthly_limit=st.integers(1, MAX_TOKENS)`` to :func:`accounts` or
    :func:`operations`.
    """
    return st.integers(1, 10)


def amounts() -> st.SearchStrategy[int]:
    """Deduction amounts of 1 to 5, against :func:`monthly_limits` of 1 to 10."""
    return st.integers(1, 5)


def accounts(
    user_id: st.SearchStrategy[str] | None = None,
    monthly_limit: st.SearchStrategy[int] | None = None,
    reset_anchor: st.SearchStrategy[datetime | None] | None = None,
) -> st.SearchStrategy[AccountSpec]:
    """Accounts to open, from :func:`user_ids`, :func:`monthly_limits` and :func:`anchors`.

    Draw several with distinct users through ``st.lists``:

    >>> from hypothesis import given, strategies as st
    >>> from token_ledger import TokenLedger
    >>> @given(st.lists(accounts(), min_size=1, max_size=3, unique_by=lambda a: a.user_id))
    ... def test_new_accounts_have_their_whole_allowance(specs):
    ...     ledger = TokenLedger.memory()
    ...     for spec in specs:
    ...         spec.open(ledger)
    ...         assert ledger.status(spec.user_id).monthly_remaining == spec.monthly_limit
    >>> test_new_accounts_have_their_whole_allowance()
    """
    return st.builds(
        AccountSpec,
        user_id=user_ids() if user_id is None else user_id,
        monthly_limit=monthly_limits() if monthly_limit is None else monthly_limit,
        reset_anchor=anchors() if reset_anchor is None else reset_anchor,
    )


def clock_moves(*, backwards: bool = True) -> st.SearchStrategy[timedelta]:
    """How far a clock moves between two operations.

    Within a day, across a month end (1 to 45 days), across several periods
    (up to 400 days, more than the longest policy's year), and with
    ``backwards`` a step of up to two hours back, as NTP corrections do.

    >>> from hypothesis import given
    >>> @given(clocks(), clock_moves(backwards=False))
    ... def test_time_goes_forwards(clock, delta):
    ...     before = clock()
    ...     assert clock.advance(delta) >= before
    >>> test_time_goes_forwards()
    """
    moves = [
        st.timedeltas(timedelta(0), timedelta(hours=6)),
        st.timedeltas(timedelta(days=1), timedelta(days=45)),
        st.timedeltas(timedelta(days=45), timedelta(days=400)),
    ]
    if backwards:
        moves.append(st.timedeltas(-timedelta(hours=2), timedelta(0)))
    return st.one_of(moves)


def clocks(start: st.SearchStrategy[datetime] | None = None) -> st.SearchStrategy[MovableClock]:
    """A fresh :class:`MovableClock` per example, at an instant of :func:`instants`.

    >>> from hypothesis import given
    >>> from token_ledger import TokenLedger
    >>> @given(clocks())
    ... def test_a_new_account_starts_in_the_current_period(clock):
    ...     ledger = TokenLedger.memory(clock=clock)
    ...     ledger.open_account("alice", monthly_limit=50)
    ...     status = ledger.status("alice")
    ...     assert status.period_start <= clock() < status.next_reset
    >>> test_a_new_account_starts_in_the_current_period()
    """
    return st.builds(MovableClock, instants() if start is None else start)


def operations(
    user_ids: Sequence[str],
    *,
    amount: st.SearchStrategy[int] | None = None,
    monthly_limit: st.SearchStrategy[int] | None = None,
    move: st.SearchStrategy[timedelta] | None = None,
) -> st.SearchStrategy[Operation]:
    """One operation: a deduction, limit change or reset for one of ``user_ids``, or time passing.

    Half of the ledger operations are deductions, a third of which carry an
    idempotency key from a small pool, so retries and key conflicts happen.
    Time passes by a :class:`MoveClock` of ``move`` (default
    :func:`clock_moves`) or by a :class:`MoveToReset` to within five minutes
    of a user's next reset.

    >>> from hypothesis import given
    >>> @given(operations(["alice"]))
    ... def test_operations_name_known_users(operation):
    ...     assert getattr(operation, "user_id", "alice") == "alice"
    >>> test_operations_name_known_users()
    """
    return st.one_of(
        _ledger_operations(user_ids, amount, monthly_limit), _time_passes(user_ids, move)
    )


def _time_passes(
    user_ids: Sequence[str], move: st.SearchStrategy[timedelta] | None
) -> st.SearchStrategy[Operation]:
    to_a_reset = st.builds(
        MoveToReset,
        st.sampled_from(list(user_ids)),
        st.timedeltas(-timedelta(minutes=5), timedelta(minutes=5)),
    )
    return st.one_of(st.builds(MoveClock, clock_moves() if move is None else move), to_a_reset)


def _ledger_operations(
    user_ids: Sequence[str],
    amount: st.SearchStrategy[int] | None,
    monthly_limit: st.SearchStrategy[int] | None,
) -> st.SearchStrategy[Operation]:
    if not user_ids:
        raise InvalidArgument("operations need at least one user id")
    user = st.sampled_from(list(user_ids))
    deductions = st.builds(
        Deduct,
        user_id=user,
        amount=amounts() if amount is None else amount,
        feature=st.one_of(st.none(), st.sampled_from(FEATURES)),
        idempotency_key=st.one_of(st.none(), st.none(), st.sampled_from(IDEMPOTENCY_KEYS)),
    )
    others = st.one_of(
        st.builds(SetLimit, user, monthly_limits() if monthly_limit is None else monthly_limit),
        st.builds(ResetIfNeeded, user),
        st.just(ResetAllStale()),
    )
    return st.one_of(deductions, others)


def operation_sequences(
    user_ids: Sequence[str],
    *,
    max_size: int = 60,
    amount: st.SearchStrategy[int] | None = None,
    monthly_limit: st.SearchStrategy[int] | None = None,
    move: st.SearchStrategy[timedelta] | None = None,
) -> st.SearchStrategy[list[Operation]]:
    """Bursts of ledger operations, each followed by time passing; keywords as :func:`operations`.

    Bursts let a sequence spend a good part of an allowance within one
    period and then do it again in the next, which a flat list of the same
    length rarely does. A failure shrinks to the few steps that matter.

    >>> from hypothesis import given
    >>> from token_ledger import TokenLedger
    >>> @given(clocks(), operation_sequences(["alice", "bob"]))
    ... def test_refusals_leave_usage_alone(clock, steps):
    ...     ledger = TokenLedger.memory(clock=clock)
    ...     for user_id in ("alice", "bob"):
    ...         ledger.open_account(user_id, monthly_limit=50)
    ...     for step in steps:
    ...         step.apply(ledger, clock)
    ...     for entry in ledger.history(success=False, limit=1000):
    ...         assert entry.amount > entry.balance_after
    >>> test_refusals_leave_usage_alone()
    """
    burst = st.lists(_ledger_operations(user_ids, amount, monthly_limit), max_size=12)
    return st.lists(st.tuples(burst, _time_passes(user_ids, move)), max_size=8).map(
        lambda bursts: [step for burst, then in bursts for step in (*burst, then)][:max_size]
    )


@st.composite
def _scenarios(
    draw: st.DrawFn,
    policy: st.SearchStrategy[MonthlyResetPolicy],
    start: st.SearchStrategy[datetime],
    account: st.SearchStrategy[AccountSpec],
    max_accounts: int,
    max_operations: int,
) -> Scenario:
    drawn_policy = draw(policy)
    drawn_start = draw(start)
    opened = draw(
        st.lists(account, min_size=1, max_size=max_accounts, unique_by=lambda a: a.user_id)
    )
    steps = draw(operation_sequences([a.user_id for a in opened], max_size=max_operations))
    return Scenario(drawn_policy, drawn_start, tuple(opened), tuple(steps))


def scenarios(
    *,
    policy: st.SearchStrategy[MonthlyResetPolicy] | None = None,
    start: st.SearchStrategy[datetime] | None = None,
    account: st.SearchStrategy[AccountSpec] | None = None,
    max_accounts: int = 2,
    max_operations: int = 60,
) -> st.SearchStrategy[Scenario]:
    """A policy, a start, one or more (up to ``max_accounts``) accounts and operations on them.

    Pass any part to narrow it, e.g. ``scenarios(policy=policies(months=[1]))``.
    See the module's docstring for a whole property test.
    """
    return _scenarios(
        policies() if policy is None else policy,
        instants() if start is None else start,
        accounts() if account is None else account,
        max_accounts,
        max_operations,
    )
