"""``token_ledger.testing``: the clock, the operation values and the hypothesis strategies."""

from __future__ import annotations

import doctest
import functools
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from types import ModuleType

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import token_ledger.testing
import token_ledger.testing.operations
import token_ledger.testing.strategies
from token_ledger import MonthlyResetPolicy, TokenLedger
from token_ledger.testing import MovableClock
from token_ledger.testing.operations import (
    AccountSpec,
    Deduct,
    MoveClock,
    MoveToReset,
    Scenario,
)
from token_ledger.testing.strategies import (
    anchors,
    clock_moves,
    instants,
    operations,
    scenarios,
)

UTC = timezone.utc


@pytest.mark.parametrize(
    "module",
    [
        token_ledger.testing,
        token_ledger.testing.operations,
        token_ledger.testing.strategies,
    ],
    ids=lambda module: module.__name__,
)
def test_docstring_examples_run(module: ModuleType) -> None:
    """Every strategy's docstring shows a property test; each one runs and passes."""
    results = doctest.testmod(module)

    assert results.attempted > 0
    assert results.failed == 0


def test_the_clock_and_the_operations_import_without_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "from token_ledger.testing import MovableClock\n"
        "from token_ledger.testing.operations import Scenario\n"
        "try:\n"
        "    import token_ledger.testing.strategies\n"
        "except ImportError:\n"
        "    print('strategies need hypothesis')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert completed.stdout.strip() == "strategies need hypothesis"


def test_a_clock_shows_its_instant_in_failing_examples() -> None:
    clock = MovableClock(datetime(2026, 1, 31, tzinfo=UTC))

    assert repr(clock) == (
        "MovableClock(datetime.datetime(2026, 1, 31, 0, 0, tzinfo=datetime.timezone.utc))"
    )


def test_move_to_reset_lands_next_to_the_users_own_reset() -> None:
    """Anniversary accounts reset on their own day; the move follows the user's anchor."""
    start = datetime(2026, 1, 20, tzinfo=UTC)
    anchor = datetime(2025, 12, 31, 9, tzinfo=UTC)
    scenario = Scenario(MonthlyResetPolicy(), start, (AccountSpec("alice", 5, anchor),), ())
    ledger, clock = scenario.open_ledger()

    MoveToReset("alice", -timedelta(minutes=1)).apply(ledger, clock)

    assert clock() == datetime(2026, 1, 31, 8, 59, tzinfo=UTC)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_memory_and_sqlite_ledgers_agree_on_every_generated_scenario(scenario: Scenario) -> None:
    """A cross-check of the two engines, and proof that scenarios drive any engine."""
    memory, memory_clock = scenario.open_ledger()
    sqlite, sqlite_clock = scenario.open_ledger(functools.partial(TokenLedger.sqlite, ":memory:"))
    with sqlite:
        for operation in scenario.operations:
            operation.apply(memory, memory_clock)
            operation.apply(sqlite, sqlite_clock)
            for account in scenario.accounts:
                assert sqlite.status(account.user_id) == memory.status(account.user_id)
        assert sqlite.history(limit=10_000).to_dicts() == memory.history(limit=10_000).to_dicts()


@given(scenarios())
def test_scenarios_open_distinct_users_and_operate_only_on_them(scenario: Scenario) -> None:
    users = [account.user_id for account in scenario.accounts]

    assert len(set(users)) == len(users) >= 1
    for operation in scenario.operations:
        assert getattr(operation, "user_id", users[0]) in users


def test_instants_reach_month_boundaries() -> None:
    """Half of the instants are drawn next to a boundary, where reset bugs live."""
    at = find(instants(), lambda at: at.day == 1 and at.hour == 0 and at.year > 2000)

    assert (at.day, at.hour) == (1, 0)


def test_anchors_reach_the_31st() -> None:
    anchor = find(anchors(), lambda anchor: anchor is not None and anchor.day == 31)

    assert anchor is not None
    assert anchor.day == 31


@given(
    instants(datetime(2026, 1, 31, 20, tzinfo=UTC), datetime(2026, 2, 1, 4, tzinfo=UTC)),
)
def test_instants_stay_within_their_bounds_and_are_utc(at: datetime) -> None:
    assert datetime(2026, 1, 31, 20, tzinfo=UTC) <= at <= datetime(2026, 2, 1, 4, tzinfo=UTC)
    assert at.tzinfo is UTC


@given(clock_moves(backwards=False))
def test_clock_moves_can_be_kept_forwards(delta: timedelta) -> None:
    assert delta >= timedelta(0)


def test_clock_moves_step_back_unless_told_not_to() -> None:
    assert find(clock_moves(), lambda delta: delta < timedelta(0)) < timedelta(0)


@given(st.data())
def test_operations_use_the_strategies_they_are_given(data: st.DataObject) -> None:
    operation = data.draw(
        operations(["alice"], amount=st.just(7), move=st.just(timedelta(days=31)))
    )

    if isinstance(operation, Deduct):
        assert operation.amount == 7
    if isinstance(operation, MoveClock):
        assert operation.delta == timedelta(days=31)


def test_strategies_refuse_impossible_arguments_when_built() -> None:
    with pytest.raises(InvalidArgument):
        operations([])
    with pytest.raises(InvalidArgument):
        instants(datetime(2027, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
