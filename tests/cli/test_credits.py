"""grant, refund, reconcile and overage through click's runner."""

from __future__ import annotations

import json

import attrs

from cli.helpers import Run
from token_ledger import TokenLedger


def test_grant_adds_tokens_that_status_shows(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)

    result = run("grant", "u1", "25", "--reason", "purchase", "--expires-at", "2999-01-01T00:00Z")
    replay = run("grant", "u1", "25", "--idempotency-key", "order-1", "--json")
    again = run("grant", "u1", "25", "--idempotency-key", "order-1", "--json")

    assert result.stdout.startswith("Granted 25 tokens to 'u1' (grant ")
    assert json.loads(replay.stdout) == json.loads(again.stdout)
    assert json.loads(replay.stdout)["operation_type"] == "grant"
    assert ledger.status("u1").grant_balance == 50


def test_refund_gives_back_what_is_left_of_a_deduction(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)
    spent = ledger.deduct("u1", 8).transaction

    partial = run("refund", str(spent.id), "3", "--reason", "timeout")
    rest = run("refund", str(spent.id), "--json")
    none_left = run("refund", str(spent.id))

    assert partial.stdout.startswith(f"Refunded 3 tokens of #{spent.id} to 'u1'")
    assert json.loads(rest.stdout)["amount"] == 5
    assert none_left.exit_code == 1
    assert "refunded in full" in none_left.stderr
    assert ledger.status("u1").monthly_used == 0


def test_overage_is_set_with_set_limit(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)

    result = run("account", "set-limit", "u1", "--overage", "5", "--json")

    assert json.loads(result.stdout)["overage_limit"] == 5
    assert ledger.status("u1").total_remaining == 15


def test_reconcile_exits_3_and_lists_a_balance_that_differs_from_the_log(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=10)
    ledger.deduct("u1", 4)
    assert run("reconcile").stdout == "Every stored balance matches the log.\n"

    account = ledger.get_account("u1")
    with ledger.repository.unit_of_work() as work:
        work.save_accounts([attrs.evolve(account, monthly_tokens_used=9)])
    result = run("reconcile", "--user", "u1", "--json")

    assert result.exit_code == 3
    assert json.loads(result.stdout) == [
        {"user_id": "u1", "field": "monthly_tokens_used", "stored": 9, "expected": 4}
    ]
