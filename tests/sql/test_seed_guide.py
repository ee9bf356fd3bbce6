"""The seed guide, followed query by query on a ledger with the optional SQL installed.

The queries and their answers are in ``tests/seed_guide.py``; they run
verbatim, in the ``public`` schema of a database of their own, on a server
whose sessions are in UTC as the guide's are: once on the guide's own kind of
ledger, once on one with an organisation and its members.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

import seed_guide
from postgres_server import Database
from seed_guide import ORGANISATION_WALKTHROUGH, WALKTHROUGH, Placeholder, Step
from token_ledger import InsufficientTokens, TokenLedger, install_postgres_sql
from token_ledger.clock import system_clock
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

UTC = timezone.utc
AGE = timedelta(days=70)


@pytest.fixture
def guide_database(postgres_database: Database) -> Iterator[str]:
    with postgres_database.new_database() as url:
        with TokenLedger.postgres(url, clock=MovableClock(system_clock() - AGE)) as old:
            for user_id, used in (("uuid", 36), ("user-uuid-here", 10), ("forgotten", 20)):
                old.open_account(user_id, monthly_limit=50)
                old.deduct(user_id, used)
        with TokenLedger.postgres(url) as ledger:
            ledger.open_account("heavy", monthly_limit=100)
            ledger.deduct("heavy", 95)
            with pytest.raises(InsufficientTokens):
                ledger.deduct("heavy", 50)
        with psycopg.connect(url) as conn:
            install_postgres_sql(conn)
        yield url


@pytest.fixture
def organisation_database(postgres_database: Database) -> Iterator[str]:
    """The ledger of ``ORGANISATION_WALKTHROUGH``: acme and its members, and one account on
    its own."""
    with postgres_database.new_database() as url:
        with TokenLedger.postgres(url, clock=MovableClock(system_clock() - AGE)) as old:
            old.open_account("acme", monthly_limit=100)
            for user_id, used in (("uuid", 36), ("user-uuid-here", 10)):
                old.open_account(user_id, monthly_limit=50, organisation_id="acme")
                old.deduct(user_id, used)
            old.open_account("forgotten", monthly_limit=50)
            old.deduct("forgotten", 20)
        with TokenLedger.postgres(url) as ledger:
            ledger.open_account("heavy", monthly_limit=100, organisation_id="acme")
            ledger.deduct("heavy", 95)  # acme's month reset, then 95 of it spent
            with pytest.raises(InsufficientTokens) as refused:
                ledger.deduct("heavy", 10)
            assert refused.value.refused_by is None  # heavy's own 5 are too few
            ledger.open_account("ivy", monthly_limit=50, organisation_id="acme")
            ledger.deduct("ivy", 3)
            with pytest.raises(InsufficientTokens) as refused:
                ledger.deduct("ivy", 10)
            assert refused.value.refused_by == "acme"
        with psycopg.connect(url) as conn:
            install_postgres_sql(conn)
        yield url


def month_start(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def resolved(expected: object, values: dict[Placeholder, object]) -> object:
    """``expected`` with its placeholders replaced; ``ANY`` stays, to match anything."""
    if isinstance(expected, Placeholder):
        return values.get(expected, expected)
    if isinstance(expected, tuple):
        return tuple(resolved(item, values) for item in expected)
    if isinstance(expected, list):
        return [resolved(item, values) for item in expected]
    if isinstance(expected, dict):
        return {key: resolved(item, values) for key, item in expected.items()}
    return expected


def matches(actual: object, expected: object) -> bool:
    if expected is seed_guide.ANY:
        return True
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(actual, (tuple, list))
            and len(actual) == len(expected)
            and all(matches(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(matches(actual[key], expected[key]) for key in expected)
        )
    return actual == expected


def follow(url: str, walkthrough: list[Step]) -> None:
    with psycopg.connect(url, autocommit=True, options="-c TimeZone=UTC") as conn:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        current, old = month_start(now), month_start(now - AGE)
        values: dict[Placeholder, object] = {
            seed_guide.CURRENT_MONTH: current,
            seed_guide.OLD_MONTH: old,
            seed_guide.CURRENT_MONTH_ISO: current.isoformat(timespec="microseconds"),
            seed_guide.OLD_MONTH_ISO: old.isoformat(timespec="microseconds"),
        }
        for step in walkthrough:
            answer: list[tuple[Any, ...]] = conn.execute(step.query).fetchall()
            expected = resolved(step.rows, values)
            assert matches(answer, expected), f"{step.guide}:\n{answer}\n!=\n{expected}"


def test_every_query_of_the_guide_gives_the_answer_it_expects(guide_database: str) -> None:
    follow(guide_database, WALKTHROUGH)


def test_the_guide_counts_an_organisation_as_one_account_and_members_by_their_own_allowance(
    organisation_database: str,
) -> None:
    follow(organisation_database, ORGANISATION_WALKTHROUGH)


@pytest.mark.parametrize("walkthrough", [WALKTHROUGH, ORGANISATION_WALKTHROUGH])
def test_the_walkthrough_runs_every_query_of_the_guide(walkthrough: list[Step]) -> None:
    queries = {
        value
        for name, value in vars(seed_guide).items()
        if name.isupper() and isinstance(value, str) and not isinstance(value, Placeholder)
    }

    assert {step.query for step in walkthrough} == queries
