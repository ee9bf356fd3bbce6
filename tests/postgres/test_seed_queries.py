"""The seed system's maintenance queries run, verbatim, against the tables we create.

They are copied from its "Token System Maintenance Guide" with ``'uuid'``
left as it is: the account below is called ``uuid``. The guide's queries of
its own view, functions and triggers are not here; the library replaces those.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg import sql

from postgres_server import Database
from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.clock import system_clock
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

HEALTH_CHECK = """
SELECT
  COUNT(*) as total_users,
  COUNT(*) FILTER (WHERE last_monthly_reset >= DATE_TRUNC('month', CURRENT_DATE)) as current,
  COUNT(*) FILTER (WHERE last_monthly_reset < DATE_TRUNC('month', CURRENT_DATE)) as stale
FROM user_tokens;
"""
RECENT_RESETS = """
SELECT user_id, created_at, operation_context
FROM token_transactions
WHERE operation_type = 'reset'
  AND created_at >= NOW() - INTERVAL '7 days'
ORDER BY created_at DESC;
"""
USER_STATUS = "SELECT * FROM user_tokens WHERE user_id = 'uuid';"
LAST_RESET = """
SELECT * FROM token_transactions
WHERE user_id = 'uuid' AND operation_type = 'reset'
ORDER BY created_at DESC LIMIT 1;
"""
STALE_ALERT = """
SELECT COUNT(*) FROM user_tokens
WHERE last_monthly_reset < DATE_TRUNC('month', CURRENT_DATE) - INTERVAL '1 day';
"""
FAILED_ALERT = """
SELECT COUNT(*) FROM token_transactions
WHERE success = false
  AND created_at >= NOW() - INTERVAL '1 hour';
"""
HIGH_USAGE = """
SELECT COUNT(*) FROM user_tokens
WHERE monthly_tokens_used::float / monthly_limit > 0.9;
"""


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
    assert run(seeded, postgres_schema, HIGH_USAGE) == [(1,)]


def test_the_troubleshooting_queries_show_the_user_and_the_reset(
    seeded: Database, postgres_schema: str
) -> None:
    recent = run(seeded, postgres_schema, RECENT_RESETS)
    status = run(seeded, postgres_schema, USER_STATUS)
    last_reset = run(seeded, postgres_schema, LAST_RESET)

    assert [(user_id, context["previous_used"]) for user_id, _, context in recent] == [("uuid", 36)]
    assert [row[:3] for row in status] == [("uuid", 50, 0)]
    assert len(last_reset) == 1
