"""The README tells a DBA which statements a deduction sends; these are the ones sent."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from postgres.support import counting_cursor
from postgres_server import Database
from token_ledger import TokenLedger
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

README = Path(__file__).resolve().parents[2] / "README.md"
UTC = timezone.utc


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_readme_shows_every_statement_of_a_deduction(
    postgres_database: Database, postgres_schema: str
) -> None:
    """A keyed deduction that also stores a pending reset runs all four of them."""
    cursor = counting_cursor()
    clock = MovableClock(datetime(2026, 1, 15, tzinfo=UTC))
    pool = ConnectionPool(
        postgres_database.url, min_size=1, max_size=1, open=True, kwargs={"cursor_factory": cursor}
    )
    with pool, TokenLedger.postgres(pool, schema=postgres_schema, clock=clock) as ledger:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 4)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        cursor.statements.clear()

        ledger.deduct("u1", 5, idempotency_key="request-1")

    schema = sql.Identifier(postgres_schema).as_string(None)
    sent = [normalized(text).replace(schema, '"public"') for text in cursor.statements]
    documented = normalized(README.read_text(encoding="utf-8"))
    assert len(sent) == 4
    assert [text for text in sent if text not in documented] == []
