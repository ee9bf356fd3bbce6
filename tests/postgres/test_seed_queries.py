"""The seed system's maintenance queries of its tables run, verbatim, on the library's alone.

The queries are those of ``tests/seed_guide.py`` that read only the tables,
with ``'uuid'`` left as it is: the account below is called ``uuid``. Without
the optional SQL installed, a stale row stays stale until its next write.
The guide's queries of its view, functions and triggers run in
``tests/sql/test_seed_guide.py``, with the SQL installed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg import sql

from postgres_server import Database
from seed_guide import (
    FAILED_ALERT,
    HEALTH_CHECK,
    HIGH_USAGE_ALERT,
    LAST_RESET,
    RECENT_RESETS,
    STALE_ALERT,
    USER_STATUS,
)
from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.clock import system_clock
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres


@pytest.fixture
def seeded(postgres_database: Database, postgres_schema: str) -> Database:
    """Accounts as the guide expects them: one reset this week, one stale, one nearly spent."""
    now = system_clock()
    long_ago = MovableClock(now - timedelta(days=70))
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema, clock=long_ago) as old:
        old.open_account("uuid", monthly_limit=50)
        old.deduct("uuid", 36)
        old.open_account("forgotten", monthly_limit=50)
        old.deduct("forgotten", 10)
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.reset_if_needed("uuid")
        ledger.open_account("busy", monthly_limit=100)
        ledger.deduct("busy", 95)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("busy", 50)
    return postgres_database


def run(database: Database, schema: str, query: str) -> list[tuple[object, ...]]:
    with database.connect() as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(query).fetchall()


def test_the_health_check_counts_current_and_stale_users(
    seeded: Database, postgres_schema: str
) -> None:
    assert run(seeded, postgres_schema, HEALTH_CHECK) == [(3, 2, 1)]


def test_the_alerts_see_stale_users_failures_and_high_usage(
    seeded: Database, postgres_schema: str
) -> None:
    assert run(seeded, postgres_schema, STALE_ALERT) == [(1,)]
    assert run(seeded, postgres_schema, FAILED_ALERT) == [(1,)]
    assert run(seeded, postgres_schema, HIGH_USAGE_ALERT) == [(1,)]


def test_the_troubleshooting_queries_show_the_user_and_the_reset(
    seeded: Database, postgres_schema: str
) -> None:
    recent = run(seeded, postgres_schema, RECENT_RESETS)
    status = run(seeded, postgres_schema, USER_STATUS)
    last_reset = run(seeded, postgres_schema, LAST_RESET)

    assert [(user_id, context["previous_used"]) for user_id, _, context in recent] == [("uuid", 36)]
    assert [row[:3] for row in status] == [("uuid", 50, 0)]
    assert len(last_reset) == 1


@pytest.fixture
def with_organisation(postgres_database: Database, postgres_schema: str) -> Database:
    """acme and its members: "uuid" (36 of its own 50, reset this week) and "busy" (95 of
    100 this month, one refusal), and "forgotten" on its own, stale."""
    now = system_clock()
    long_ago = MovableClock(now - timedelta(days=70))
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema, clock=long_ago) as old:
        old.open_account("acme", monthly_limit=100)
        old.open_account("uuid", monthly_limit=50, organisation_id="acme")
        old.deduct("uuid", 36)
        old.deduct("acme", 4)
        old.open_account("forgotten", monthly_limit=50)
        old.deduct("forgotten", 10)
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        ledger.reset_if_needed("uuid")  # the member's reset: acme's month is left to acme
        ledger.open_account("busy", monthly_limit=100, organisation_id="acme")
        ledger.deduct("busy", 95)  # acme is reset, then pays 95 too
        with pytest.raises(InsufficientTokens):
            ledger.deduct("busy", 50)
    return postgres_database


def test_an_organisation_is_one_account_among_the_others(
    with_organisation: Database, postgres_schema: str
) -> None:
    """Each row is one account's own budget: the health check counts acme once, high usage
    finds acme (95 of its 100) and busy (95 of its own 100), a refusal is one failed entry
    (the member's), and each budget has its own reset entry."""
    assert run(with_organisation, postgres_schema, HEALTH_CHECK) == [(4, 3, 1)]
    assert run(with_organisation, postgres_schema, STALE_ALERT) == [(1,)]
    assert run(with_organisation, postgres_schema, FAILED_ALERT) == [(1,)]
    assert run(with_organisation, postgres_schema, HIGH_USAGE_ALERT) == [(2,)]
    recent = run(with_organisation, postgres_schema, RECENT_RESETS)
    assert [(user_id, context["previous_used"]) for user_id, _, context in recent] == [
        ("acme", 40),
        ("uuid", 36),
    ]


def test_a_members_row_holds_its_own_monthly_allowance(
    with_organisation: Database, postgres_schema: str
) -> None:
    (status,) = run(with_organisation, postgres_schema, USER_STATUS)
    (last_reset,) = run(with_organisation, postgres_schema, LAST_RESET)

    assert status[:3] == ("uuid", 50, 0)
    assert status[-2:] == ("acme", None)  # organisation_id, spending_windows
    assert last_reset[1:4] == ("uuid", "reset", 36)
    assert last_reset[-1] is None  # member_entry_id: a reset is the member's own
