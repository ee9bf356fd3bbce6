"""history and export: the transaction log, filtered, paged, and streamed whole."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cli.helpers import Run, assert_error
from token_ledger import InsufficientTokens, StorageError, TokenLedger, Transaction
from token_ledger.cli import ENTRY_COLUMNS, EXPORT_PAGE_SIZE

CSV_HEADER = (
    "id,user_id,operation_type,amount,feature,operation_context,success,created_at,"
    "idempotency_key,balance_after,effects,reference,member_entry_id\n"
)


def as_json(entry: Transaction) -> dict[str, object]:
    return {
        "id": entry.id,
        "user_id": entry.user_id,
        "operation_type": entry.operation_type.value,
        "amount": entry.amount,
        "feature": entry.feature,
        "operation_context": entry.operation_context,
        "success": entry.success,
        "created_at": entry.created_at.isoformat(),
        "idempotency_key": entry.idempotency_key,
        "balance_after": entry.balance_after,
        "effects": entry.effects.to_dict(),
        "reference": entry.reference,
        "member_entry_id": entry.member_entry_id,
    }


@pytest.fixture
def entries(ledger: TokenLedger) -> list[Transaction]:
    """Four entries, newest first: u2's limit change and deduction, u1's refusal and deduction."""
    ledger.open_account("u1", monthly_limit=10)
    ledger.open_account("u2", monthly_limit=10)
    ledger.deduct("u1", 3, feature="search", context={"q": "x"}, idempotency_key="k-1")
    with pytest.raises(InsufficientTokens):
        ledger.deduct("u1", 20, feature="search")
    ledger.deduct("u2", 4, feature="summary")
    ledger.set_limit("u2", 20)
    return ledger.history()


def history_ids(run: Run, *args: str) -> list[int]:
    result = run("history", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return [entry["id"] for entry in json.loads(result.stdout)]


def test_history_is_a_table_newest_first(run: Run, entries: list[Transaction]) -> None:
    result = run("history")

    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "created_at",
        "user_id",
        "operation_type",
        "amount",
        "success",
        "balance_after",
        "feature",
        "member_entry_id",
        "operation_context",
    ]
    assert [int(line.split()[0]) for line in lines[2:]] == [entry.id for entry in entries]
    assert lines[-1].split()[-4:] == ["search", "-", '{"q":', '"x"}']
    assert result.stderr == ""


def test_history_json_holds_every_column(run: Run, entries: list[Transaction]) -> None:
    result = run("history", "--json")

    assert json.loads(result.stdout) == [as_json(entry) for entry in entries]


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (("--user", "u2"), lambda e: e.user_id == "u2"),
        (("--type", "limit_change"), lambda e: e.operation_type == "limit_change"),
        (("--feature", "search"), lambda e: e.feature == "search"),
        (("--failed",), lambda e: not e.success),
        (("--success", "--user", "u1"), lambda e: e.success and e.user_id == "u1"),
    ],
    ids=["user", "type", "feature", "failed", "success-and-user"],
)
def test_history_filters(
    run: Run,
    entries: list[Transaction],
    args: tuple[str, ...],
    keep: Callable[[Transaction], bool],
) -> None:
    assert history_ids(run, *args) == [entry.id for entry in entries if keep(entry)]


def test_history_since_and_until_take_z_or_an_offset(run: Run, entries: list[Transaction]) -> None:
    boundary = entries[1].created_at
    as_z = boundary.isoformat().replace("+00:00", "Z")
    as_offset = boundary.astimezone(timezone(timedelta(hours=1))).isoformat()

    assert history_ids(run, "--since", as_z) == [entries[0].id, entries[1].id]
    assert history_ids(run, "--since", as_offset) == [entries[0].id, entries[1].id]
    assert history_ids(run, "--until", as_z) == [entries[2].id, entries[3].id]


def test_history_refuses_a_time_without_a_time_zone(run: Run) -> None:
    for naive in ("2026-02-01T00:00", "2026-02-01"):
        assert_error(run("history", "--since", naive), 2, "has no time zone")
    assert_error(run("history", "--until", "yesterday"), 2, "is not an ISO 8601 instant")


def test_a_full_page_names_the_next_one_on_stderr(run: Run, entries: list[Transaction]) -> None:
    first = run("history", "--limit", "2")
    second = run("history", "--limit", "2", "--before-id", str(entries[1].id), "--json")
    last = run("history", "--limit", "2", "--before-id", str(entries[3].id))

    assert first.stderr == f"Older entries: --before-id {entries[1].id}\n"
    assert [entry["id"] for entry in json.loads(second.stdout)] == [entries[2].id, entries[3].id]
    assert (last.stderr, last.stdout.count("\n")) == ("", 2)


def test_export_csv_writes_a_header_and_every_entry(run: Run, entries: list[Transaction]) -> None:
    result = run("export")

    assert result.stdout.startswith(CSV_HEADER)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(row["id"]) for row in rows] == [entry.id for entry in entries]
    assert rows[-1] == {
        "id": str(entries[-1].id),
        "user_id": "u1",
        "operation_type": "deduct",
        "amount": "3",
        "feature": "search",
        "operation_context": '{"q":"x"}',
        "success": "true",
        "created_at": entries[-1].created_at.isoformat(),
        "idempotency_key": "k-1",
        "balance_after": "7",
        "effects": '{"usage":3}',
        "reference": "",
        "member_entry_id": "",
    }
    assert rows[-2]["success"] == "false"
    assert rows[-2]["effects"] == "{}"
    assert rows[0]["feature"] == rows[0]["idempotency_key"] == rows[0]["reference"] == ""
    assert result.stderr == "Exported 4 entries.\n"


def test_export_jsonl_of_one_user_to_a_file(
    run: Run, entries: list[Transaction], tmp_path: Path
) -> None:
    output = tmp_path / "u2.jsonl"

    result = run("export", "--format", "jsonl", "--user", "u2", "--output", str(output))

    assert (result.exit_code, result.stdout) == (0, "")
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        as_json(entry) for entry in entries if entry.user_id == "u2"
    ]


def test_export_of_an_empty_log_is_the_header_alone(run: Run) -> None:
    result = run("export")

    assert (result.stdout, result.stderr) == (CSV_HEADER, "Exported 0 entries.\n")


@pytest.fixture
def credits(ledger: TokenLedger) -> list[Transaction]:
    """A grant, a deduction that spends part of it, and a refund: references and effects."""
    ledger.open_account("u1", monthly_limit=10)
    ledger.grant("u1", 5, reason="promo")
    spent = ledger.deduct("u1", 12, feature="search", context={"q": "x"}).transaction
    assert spent.id is not None
    ledger.refund(spent.id, 3, reason="timeout")
    return ledger.history()


def test_export_columns_are_the_keys_of_transaction_to_dict(credits: list[Transaction]) -> None:
    """One list: a field added to Transaction.to_dict is exported without touching the CLI."""
    assert ",".join(ENTRY_COLUMNS) + "\n" == CSV_HEADER
    assert all(tuple(entry.to_dict()) == ENTRY_COLUMNS for entry in credits)


def test_export_writes_every_column_in_csv_and_jsonl(run: Run, credits: list[Transaction]) -> None:
    _, deduction, grant = credits
    grant_id = grant.reference

    rows = list(csv.DictReader(io.StringIO(run("export").stdout)))
    lines = [json.loads(line) for line in run("export", "--format", "jsonl").stdout.splitlines()]

    assert [list(row) for row in rows] == [list(ENTRY_COLUMNS)] * 3
    assert [(row["operation_type"], row["effects"], row["reference"]) for row in rows] == [
        ("refund", '{"usage":-3}', str(deduction.id)),
        ("deduct", f'{{"usage":10,"grants":{{"{grant_id}":-2}}}}', ""),
        ("grant", f'{{"grants":{{"{grant_id}":5}}}}', grant_id),
    ]
    assert [row["operation_context"] for row in rows] == [
        '{"reason":"timeout"}',
        '{"q":"x"}',
        '{"reason":"promo","expires_at":null}',
    ]
    assert lines == [as_json(entry) for entry in credits]
    assert [(line["effects"], line["reference"]) for line in lines] == [
        ({"usage": -3}, str(deduction.id)),
        ({"usage": 10, "grants": {grant_id: -2}}, None),
        ({"grants": {grant_id: 5}}, grant_id),
    ]
    for row, line in zip(rows, lines, strict=True):
        assert row == {column: csv_cell(line[column]) for column in ENTRY_COLUMNS}


def csv_cell(value: object) -> str:
    """How a value of Transaction.to_dict reads back from the CSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def fill_log(ledger: TokenLedger, count: int) -> None:
    """``count`` entries in one unit of work: quicker than as many deductions."""
    ledger.open_account("u1", monthly_limit=10)
    entry = Transaction("u1", "deduct", 1, ledger.now(), balance_after=9)
    with ledger.repository.unit_of_work() as work:
        work.append_transactions([entry] * count)


def test_export_streams_thousands_of_entries_a_page_at_a_time(
    run: Run, ledger: TokenLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_log(ledger, 3 * EXPORT_PAGE_SIZE + 500)
    pages: list[dict[str, Any]] = []
    history = TokenLedger.history

    def spy(self: TokenLedger, *args: Any, **kwargs: Any) -> list[Transaction]:
        pages.append(kwargs)
        return history(self, *args, **kwargs)

    monkeypatch.setattr(TokenLedger, "history", spy)
    result = run("export", "--format", "jsonl")

    ids = [json.loads(line)["id"] for line in result.stdout.splitlines()]
    assert len(set(ids)) == len(ids) == 3 * EXPORT_PAGE_SIZE + 500
    assert ids == sorted(ids, reverse=True)
    assert [page["limit"] for page in pages] == [EXPORT_PAGE_SIZE] * 4
    assert [page["before_id"] for page in pages] == [
        None,
        *(ids[n * EXPORT_PAGE_SIZE - 1] for n in (1, 2, 3)),
    ]


def test_a_failed_export_leaves_the_output_file_as_it_was(
    run: Run, ledger: TokenLedger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fill_log(ledger, EXPORT_PAGE_SIZE + 1)
    output = tmp_path / "log.csv"
    output.write_text("yesterday's export\n", encoding="utf-8")
    history = TokenLedger.history

    def fails_on_the_second_page(self: TokenLedger, **kwargs: Any) -> list[Transaction]:
        if kwargs["before_id"] is not None:
            raise StorageError("SQLite failed: disk I/O error")
        return history(self, **kwargs)

    monkeypatch.setattr(TokenLedger, "history", fails_on_the_second_page)
    result = run("export", "--output", str(output))

    assert_error(result, 1, "SQLite failed: disk I/O error")
    assert output.read_text(encoding="utf-8") == "yesterday's export\n"
    assert list(tmp_path.glob(".log.csv.*")) == []
