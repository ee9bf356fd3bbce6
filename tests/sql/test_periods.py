"""PostgreSQL's periods are MonthlyResetPolicy's: calendar months in any zone, and anniversaries.

The anniversary rule rests on ``timestamp + interval 'N months'`` keeping the
day of the month or clamping it to the month's end exactly as
``relativedelta(months=N)`` does; the first property shows that it does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import example, given, settings
from hypothesis import strategies as st

from postgres_server import Database
from sql.support import connect_to, installed_schema
from token_ledger import MonthlyResetPolicy

pytestmark = pytest.mark.postgres

UTC = timezone.utc
# Zones with a DST gap and fold (30 minutes at Lord Howe), DST at midnight
# (Santiago), half-hour and 45-minute offsets, a skipped day (Apia, 2011), and
# the far side of the date line.
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "America/Sao_Paulo",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Pacific/Kiritimati",
]
instants = st.datetimes(
    min_value=datetime(2005, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
)
anchor_offsets = st.timedeltas(min_value=timedelta(days=-4000), max_value=timedelta(days=4000))


@pytest.fixture(scope="module")
def pg(postgres_database: Database, request: pytest.FixtureRequest) -> Iterator[Any]:
    """One schema for the module: the functions under test read no table."""
    with connect_to(postgres_database, installed_schema(postgres_database, request)) as conn:
        yield conn


def sql_period_start(
    pg: psycopg.Connection[Any], at: datetime, anchor: datetime | None, zone: str
) -> datetime:
    row = pg.execute("SELECT token_ledger_period_start(%s, %s, %s)", (at, anchor, zone)).fetchone()
    assert row is not None
    return row[0].astimezone(UTC)  # type: ignore[no-any-return]


@settings(max_examples=60)
@given(
    local=st.lists(
        st.tuples(
            st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31)),
            st.integers(-2400, 2400),
        ),
        min_size=1,
        max_size=50,
    )
)
@example(local=[(datetime(2026, 1, 31, 10), 1), (datetime(2024, 1, 31), 1)])
@example(local=[(datetime(2024, 2, 29, 23, 59, 59, 999999), 12), (datetime(2025, 3, 31), -1)])
def test_adding_months_to_a_timestamp_clamps_like_relativedelta(
    pg: psycopg.Connection[Any], local: list[tuple[datetime, int]]
) -> None:
    rows = pg.execute(
        "SELECT t + make_interval(months => n) FROM unnest(%s::timestamp[], %s::int[]) AS v(t, n)",
        ([t for t, _ in local], [n for _, n in local]),
    ).fetchall()

    assert [row[0] for row in rows] == [t + relativedelta(months=n) for t, n in local]


@settings(max_examples=150)
@given(at=instants, zone=st.sampled_from(ZONES))
@example(at=datetime(2024, 9, 15, tzinfo=UTC), zone="America/Santiago")  # 1st's midnight skipped
@example(at=datetime(2026, 10, 31, 23, tzinfo=UTC), zone="Europe/Berlin")
def test_calendar_months_match_the_policy_in_any_zone(
    pg: psycopg.Connection[Any], at: datetime, zone: str
) -> None:
    expected = MonthlyResetPolicy(timezone=zone).period(at).start

    assert sql_period_start(pg, at, None, zone) == expected


@settings(max_examples=250)
@given(at=instants, anchor_offset=anchor_offsets, zone=st.sampled_from(ZONES))
# a period starting at a wall time that occurs twice (Berlin, 25 October 2026, 02:30)
@example(
    at=datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
    anchor_offset=datetime(2026, 9, 25, 0, 30, tzinfo=UTC) - datetime(2026, 10, 25, 1, tzinfo=UTC),
    zone="Europe/Berlin",
)
# an anchor at the second 02:30 of 26 October 2025, and a period starting in a gap
@example(
    at=datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    anchor_offset=datetime(2025, 10, 26, 1, 30, tzinfo=UTC) - datetime(2026, 3, 29, 1, tzinfo=UTC),
    zone="Europe/Berlin",
)
# January 31: February 28, March 31
@example(
    at=datetime(2026, 3, 30, tzinfo=UTC),
    anchor_offset=datetime(2026, 1, 31, 10, tzinfo=UTC) - datetime(2026, 3, 30, tzinfo=UTC),
    zone="UTC",
)
def test_anniversaries_match_the_policy_in_any_zone(
    pg: psycopg.Connection[Any], at: datetime, anchor_offset: timedelta, zone: str
) -> None:
    anchor = at + anchor_offset
    expected = MonthlyResetPolicy(timezone=zone).period(at, anchor).start

    assert sql_period_start(pg, at, anchor, zone) == expected


def sql_period_end(
    pg: psycopg.Connection[Any], at: datetime, anchor: datetime | None, zone: str
) -> datetime:
    row = pg.execute("SELECT token_ledger_period_end(%s, %s, %s)", (at, anchor, zone)).fetchone()
    assert row is not None
    return row[0].astimezone(UTC)  # type: ignore[no-any-return]


@settings(max_examples=150)
@given(
    at=instants,
    anchor_offset=st.none() | anchor_offsets,
    zone=st.sampled_from(ZONES),
)
@example(at=datetime(2024, 8, 15, tzinfo=UTC), anchor_offset=None, zone="America/Santiago")
@example(
    at=datetime(2026, 2, 10, tzinfo=UTC),
    anchor_offset=datetime(2026, 1, 31, 10, tzinfo=UTC) - datetime(2026, 2, 10, tzinfo=UTC),
    zone="UTC",
)
def test_period_ends_match_the_policy_in_any_zone(
    pg: psycopg.Connection[Any], at: datetime, anchor_offset: timedelta | None, zone: str
) -> None:
    """The end of a period: when a rollover grant expires, and whether a reset follows
    right after the stored period (its allowance rolls over) or periods were skipped."""
    anchor = None if anchor_offset is None else at + anchor_offset
    expected = MonthlyResetPolicy(timezone=zone).period(at, anchor).end

    assert sql_period_end(pg, at, anchor, zone) == expected
