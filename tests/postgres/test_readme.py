"""The README tells a DBA which statements a deduction sends; these are the ones sent."""

from __future__ import annotations

import re
from collections.abc import Callable
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


def sent_by(
    postgres_database: Database, postgres_schema: str, deduct: Callable[[TokenLedger], object]
) -> list[str]:
    """The statements ``deduct`` sends, after a month in which the account spent 4."""
    cursor = counting_cursor()
    clock = MovableClock(datetime(2026, 1, 15, tzinfo=UTC))
    pool = ConnectionPool(
        postgres_database.url, min_size=1, max_size=1, open=True, kwargs={"cursor_factory": cursor}
    )
    with pool, TokenLedger.postgres(pool, schema=postgres_schema, clock=clock) as ledger:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 4)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        ledger.deduct("u1", 1)  # the pending reset, stored
        clock.set(datetime(2026, 2, 2, 12, tzinfo=UTC))
        cursor.statements.clear()

        deduct(ledger)

    schema = sql.Identifier(postgres_schema).as_string(None)
    return [normalized(text).replace(schema, '"public"') for text in cursor.statements]


def undocumented(sent: list[str]) -> list[str]:
    documented = normalized(README.read_text(encoding="utf-8"))
    return [text for text in sent if text not in documented]


def test_the_readme_shows_the_one_statement_of_a_common_deduction(
    postgres_database: Database, postgres_schema: str
) -> None:
    """A keyed deduction from an account without grants or holds, in its period."""
    sent = sent_by(
        postgres_database,
        postgres_schema,
        lambda ledger: ledger.deduct("u1", 2, idempotency_key="r"),
    )

    assert len(sent) == 1
    assert undocumented(sent) == []


def test_the_readme_shows_every_statement_of_a_deduction(
    postgres_database: Database, postgres_schema: str
) -> None:
    """A keyed deduction that also stores a pending reset: the one statement, which finds
    the account in an ended period, then all four statements of the locked path."""

    def deduct_next_month(ledger: TokenLedger) -> None:
        ledger._clock.set(datetime(2026, 3, 2, tzinfo=UTC))  # type: ignore[attr-defined]
        ledger.deduct("u1", 5, idempotency_key="request-1")

    sent = sent_by(postgres_database, postgres_schema, deduct_next_month)

    assert len(sent) == 5
    assert undocumented(sent) == []
