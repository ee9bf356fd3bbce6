"""usage: the report of tokens spent, as a table, JSON or CSV, on every engine."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from cli.helpers import LedgerDatabase, Run, assert_error
from token_ledger import TokenLedger
from token_ledger.testing import MovableClock

UTC = timezone.utc
START = datetime(2026, 1, 10, 23, 30, tzinfo=UTC)


@pytest.fixture
def spent(database: LedgerDatabase) -> Iterator[TokenLedger]:
    """Two users on January 10 and 11 (UTC); 23:30 UTC is already the 11th in Berlin."""
    clock = MovableClock(START)
    with database.open(clock) as ledger:
        ledger.open_account("u1", monthly_limit=100)
        ledger.open_account("u2", monthly_limit=100)
        chat = ledger.deduct("u1", 5, feature="chat")
        ledger.deduct("u2", 3, feature="search")
        clock.advance(timedelta(hours=2))
        ledger.deduct("u1", 7, feature="chat")
        assert chat.transaction.id is not None
        ledger.refund(chat.transaction.id, 2)
        yield ledger


def json_rows(run: Run, *args: str) -> list[dict[str, object]]:
    result = run("usage", *args, "--json")
    assert result.exit_code == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_usage_json_is_the_reports_dicts(run: Run, spent: TokenLedger) -> None:
    rows = json_rows(run, "--by", "feature,day")

    assert rows == spent.usage(by=("feature", "day")).to_dicts()
    assert rows == [
        {"feature": "chat", "day": "2026-01-10", "tokens": 5, "spent": 5, "refunded": 0,
         "deductions": 1, "refunds": 0},
        {"feature": "search", "day": "2026-01-10", "tokens": 3, "spent": 3, "refunded": 0,
         "deductions": 1, "refunds": 0},
        {"feature": "chat", "day": "2026-01-11", "tokens": 5, "spent": 7, "refunded": 2,
         "deductions": 1, "refunds": 1},
    ]  # fmt: skip


def test_usage_groups_repeat_or_combine_and_filter(run: Run, spent: TokenLedger) -> None:
    assert json_rows(run, "--by", "user", "--by", "feature") == json_rows(
        run, "--by", "feature, user"
    )
    assert json_rows(run, "--user", "u1", "--feature", "chat") == [
        {"tokens": 10, "spent": 12, "refunded": 2, "deductions": 2, "refunds": 1}
    ]
    window = json_rows(
        run, "--by", "user", "--since", "2026-01-11T00:00Z", "--until", "2026-02-01T00:00Z"
    )
    assert window == [
        {"user_id": "u1", "tokens": 5, "spent": 7, "refunded": 2, "deductions": 1, "refunds": 1}
    ]


def test_usage_days_are_the_ledgers_timezone(run: Run, spent: TokenLedger) -> None:
    result = run("--timezone", "Europe/Berlin", "usage", "--by", "day", "--json")

    assert json.loads(result.stdout) == [
        {"day": "2026-01-11", "tokens": 13, "spent": 15, "refunded": 2, "deductions": 3,
         "refunds": 1}
    ]  # fmt: skip


def test_usage_csv_has_a_header_and_one_line_per_row(run: Run, spent: TokenLedger) -> None:
    result = run("usage", "--by", "user,month", "--csv")

    assert result.exit_code == 0, result.stderr
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["user_id", "month", "tokens", "spent", "refunded", "deductions", "refunds"],
        ["u1", "2026-01-01", "10", "12", "2", "2", "1"],
        ["u2", "2026-01-01", "3", "3", "0", "1", "0"],
    ]


def test_usage_prints_a_table_in_any_format(run: Run, spent: TokenLedger) -> None:
    table = run("usage", "--by", "feature")
    markdown = run("usage", "--by", "feature", "--fmt", "github")

    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "feature", "tokens", "spent", "refunded", "deductions", "refunds"
    ]  # fmt: skip
    assert table.stdout.splitlines()[2].split() == ["chat", "10", "12", "2", "2", "1"]
    assert markdown.stdout.startswith("| feature ")


def test_usage_of_nothing_is_an_empty_list(run: Run, spent: TokenLedger) -> None:
    assert json_rows(run, "--since", "2030-01-01T00:00Z") == []
    assert run("usage", "--csv", "--user", "nobody").stdout == (
        "tokens,spent,refunded,deductions,refunds\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--by", "week"), "by takes user, feature, day, month"),
        (("--by", "day,month"), "day or month, not both"),
        (("--since", "2026-01-01"), "has no time zone"),
        (("--csv", "--json"), "give one of --csv, --json and --fmt"),
        (("--csv", "--fmt", "github"), "give one of --csv, --json and --fmt"),
    ],
)
def test_usage_refuses_a_wrong_command_line(
    run: Run, spent: TokenLedger, args: tuple[str, ...], message: str
) -> None:
    assert_error(run("usage", *args), 2, message)


def test_usage_refuses_a_range_that_ends_before_it_starts(run: Run, spent: TokenLedger) -> None:
    result = run("usage", "--since", "2026-02-01T00:00Z", "--until", "2026-01-01T00:00Z")

    assert_error(result, 1, "until must be after since")
