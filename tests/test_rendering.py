"""Statuses and history as notebooks show them (``_repr_html_``) and as plain dicts."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from token_ledger import History, InsufficientTokens, TokenLedger, TokenStatus

UTC = timezone.utc


def test_status_renders_as_a_one_row_table(ledger: TokenLedger) -> None:
    ledger.open_account("alice", monthly_limit=50)
    ledger.deduct("alice", 36)

    html = ledger.status("alice")._repr_html_()

    assert html.startswith("<table>")
    assert "<th>monthly_remaining</th>" in html
    assert "<td>alice</td><td>36</td><td>50</td><td>14</td>" in html
    assert "<td>2026-02-01 00:00:00+00:00</td>" in html  # next_reset


def test_status_html_escapes_the_user_id() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    status = TokenStatus("<script>alert(1)</script>", 0, 1, 1, start, start)

    html = status._repr_html_()

    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_history_is_a_list_of_transactions_that_renders_as_a_table(ledger: TokenLedger) -> None:
    """``History`` is still the list the contract suite compares with ``==``."""
    ledger.open_account("alice", monthly_limit=50)
    first = ledger.deduct("alice", 5, feature="chat").transaction
    second = ledger.deduct("alice", 7, feature="search", idempotency_key="r-2").transaction

    history = ledger.history("alice")

    assert isinstance(history, History)
    assert history == [second, first]
    html = history._repr_html_()
    assert html.count("<tr>") == 3  # the header and two entries
    assert "<th>id</th><th>user_id</th><th>operation_type</th><th>amount</th>" in html
    assert "<td>search</td><td>{}</td><td>True</td><td>2026-01-15T12:00:00+00:00</td>" in html


def test_history_html_escapes_features_and_contexts(ledger: TokenLedger) -> None:
    ledger.open_account("alice", monthly_limit=50)
    ledger.deduct("alice", 1, feature="<b>x</b>", context={"q": "<img src=x onerror=alert(1)>"})

    html = ledger.history("alice")._repr_html_()

    assert "<b>" not in html
    assert "<img" not in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_an_empty_history_says_so() -> None:
    assert History()._repr_html_() == "<p>No ledger entries.</p>"


def test_history_converts_to_json_ready_dicts_keyed_like_the_seed_columns(
    ledger: TokenLedger,
) -> None:
    ledger.open_account("alice", monthly_limit=10)
    with pytest.raises(InsufficientTokens):
        ledger.deduct("alice", 11, feature="chat", context={"tags": ["a"]})

    [row] = ledger.history("alice").to_dicts()

    expected = {
        "user_id": "alice",
        "operation_type": "deduct",
        "amount": 11,
        "feature": "chat",
        "operation_context": {"tags": ["a"]},
        "success": False,
        "created_at": "2026-01-15T12:00:00+00:00",
        "idempotency_key": None,
        "balance_after": 10,
    }
    assert {key: row[key] for key in expected} == expected
    assert type(row["operation_type"]) is str
    assert json.loads(json.dumps(row)) == row
