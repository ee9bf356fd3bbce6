"""init, account, status and deduct through click's runner: tables, --json and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from click.testing import CliRunner

from cli.helpers import Run, assert_error
from token_ledger import TokenLedger, TokenStatus
from token_ledger.cli import cli
from token_ledger.windows import WINDOW_UNITS

SEED_STATUS = ["monthlyUsed", "monthlyLimit", "monthlyRemaining"]


def test_init_creates_a_sqlite_file_and_can_run_again(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    runner = CliRunner()

    first = runner.invoke(cli, ["--db", str(path), "init"])
    again = runner.invoke(cli, ["--db", str(path), "init"])

    assert (first.exit_code, first.stdout) == (0, "Ledger ready.\n")
    assert (again.exit_code, again.stdout) == (0, "Ledger ready.\n")
    with TokenLedger.sqlite(path) as ledger:
        assert ledger.health().total_users == 0


def test_only_init_creates_a_sqlite_file(tmp_path: Path) -> None:
    """A mistyped path must not open an empty ledger that health would call healthy."""
    path = tmp_path / "typo.db"

    result = CliRunner().invoke(cli, ["--db", str(path), "health"])

    assert_error(result, 1, f"no ledger at '{path}': create it with 'token-ledger init'")
    assert not path.exists()


def test_account_create_prints_the_stored_account_as_a_table(run: Run) -> None:
    result = run("account", "create", "u1", "--limit", "50")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "user_id              u1",
        "monthly_limit        50",
        "monthly_tokens_used  0",
    ]
    assert lines[4] == "reset_anchor         -"
    assert lines[-1] == "reset_pending        no"


def test_account_create_json_is_the_user_tokens_row(run: Run, ledger: TokenLedger) -> None:
    result = run(
        "account",
        "create",
        "u1",
        "--limit",
        "50",
        "--reset-anchor",
        "2026-01-31T09:30:00+01:00",
        "--json",
    )

    stored = ledger.get_account("u1")
    assert json.loads(result.stdout) == {
        "user_id": "u1",
        "monthly_limit": 50,
        "monthly_tokens_used": 0,
        "last_monthly_reset": stored.last_monthly_reset.isoformat(),
        "reset_anchor": "2026-01-31T08:30:00+00:00",
        "created_at": stored.created_at.isoformat(),
        "updated_at": stored.updated_at.isoformat(),
        "overage_limit": 0,
        "grant_balance": 0,
        "reserved_tokens": 0,
        "time_zone": None,
        "rollover_cap": 0,
        "thresholds": None,
        "organisation_id": None,
        "windows": [],
        "reset_pending": False,
    }


def test_account_create_refuses_an_existing_account_unless_exist_ok(run: Run) -> None:
    run("account", "create", "u1", "--limit", "50")

    refused = run("account", "create", "u1", "--limit", "70")
    kept = run("account", "create", "u1", "--limit", "70", "--exist-ok", "--json")

    assert_error(refused, 1, "a token account already exists for user 'u1'")
    assert (kept.exit_code, json.loads(kept.stdout)["monthly_limit"]) == (0, 50)


def test_account_show_is_the_stored_row_and_status_applies_the_pending_reset(
    run: Run, past: TokenLedger
) -> None:
    """The guide's "table vs view": the row keeps last month's usage until the next write."""
    past.open_account("u1", monthly_limit=50)
    past.deduct("u1", 30)

    shown = json.loads(run("account", "show", "u1", "--json").stdout)
    status = json.loads(run("status", "u1", "--json").stdout)

    assert (shown["monthly_tokens_used"], shown["reset_pending"]) == (30, True)
    assert shown["last_monthly_reset"] == "2020-01-01T00:00:00+00:00"
    assert {key: status[key] for key in SEED_STATUS} == {
        "monthlyUsed": 0,
        "monthlyLimit": 50,
        "monthlyRemaining": 50,
    }


def test_account_set_limit_keeps_usage_and_is_recorded(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=50)
    ledger.deduct("u1", 10)

    table = run("account", "set-limit", "u1", "80")
    row = json.loads(run("account", "set-limit", "u1", "90", "--json").stdout)

    assert "monthly_limit        80" in table.stdout.splitlines()
    assert (row["monthly_limit"], row["monthly_tokens_used"]) == (90, 10)
    changes = ledger.history("u1", operation_type="limit_change")
    assert [entry.operation_context for entry in changes] == [
        {"previous_limit": 80},
        {"previous_limit": 50},
    ]


def spent_into_overage(ledger: TokenLedger) -> TokenStatus:
    """Into the overage, with a reservation held: the figures the status table once left out."""
    ledger.open_account("u1", monthly_limit=50)
    ledger.set_limit("u1", overage_limit=9)
    ledger.grant("u1", 4)
    ledger.deduct("u1", 45)
    ledger.reserve("u1", 2)
    ledger.deduct("u1", 10)  # the allowance's last 5, the grant's 4, then 1 of the overage
    return ledger.status("u1")


def test_status_table_shows_every_field_of_token_status(run: Run, ledger: TokenLedger) -> None:
    current = spent_into_overage(ledger)

    result = run("status", "u1")

    assert result.stdout.splitlines() == [
        "user_id                 u1",
        "monthly_used            51",
        "monthly_limit           50",
        "monthly_remaining       0",
        f"period_start            {current.period_start.isoformat(sep=' ')}",
        f"next_reset              {current.next_reset.isoformat(sep=' ')}",
        "grant_balance           0",
        "reserved                2",
        "overage_limit           9",
        "overage_used            1",
        "total_remaining         6",
        "hour_window             -",
        "day_window              -",
        "week_window             -",
        "organisation_id         -",
        "organisation_remaining  -",
        "available               6",
    ]
    shown = [line.split()[0] for line in result.stdout.splitlines()]
    assert shown == [
        name
        for field in attrs.fields(TokenStatus)
        for name in (
            [f"{unit}_window" for unit in WINDOW_UNITS] if field.name == "windows" else [field.name]
        )
    ]


def test_status_json_is_the_seed_response_then_every_other_field(
    run: Run, ledger: TokenLedger
) -> None:
    current = spent_into_overage(ledger)

    result = run("status", "u1", "--json")

    fields = json.loads(result.stdout)
    assert list(fields)[:3] == SEED_STATUS
    assert fields == {
        "monthlyUsed": 51,
        "monthlyLimit": 50,
        "monthlyRemaining": 0,
        "userId": "u1",
        "periodStart": current.period_start.isoformat(),
        "nextReset": current.next_reset.isoformat(),
        "grantBalance": 0,
        "reserved": 2,
        "overageLimit": 9,
        "overageUsed": 1,
        "totalRemaining": 6,
        "windows": [],
        "organisationId": None,
        "organisationRemaining": None,
        "available": 6,
    }
    assert len(fields) == len(attrs.fields(TokenStatus))


def test_deduct_records_feature_context_and_idempotency_key(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=50)

    result = run(
        "deduct",
        "u1",
        "1",
        "--feature",
        "literature_search",
        "--context",
        '{"test": true}',
        "--idempotency-key",
        "req-1",
    )

    assert (result.exit_code, result.stdout) == (0, "Deducted 1 token from 'u1': 49 remaining.\n")
    [entry] = ledger.history("u1")
    assert (entry.feature, entry.operation_context, entry.idempotency_key) == (
        "literature_search",
        {"test": True},
        "req-1",
    )


def test_deduct_json_is_the_seed_response_and_a_retry_replays_it(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=50)
    args = ("deduct", "u1", "5", "--idempotency-key", "req-1", "--json")

    first = run(*args)
    retry = run(*args)

    assert first.stdout == retry.stdout == '{"success": true, "monthlyRemaining": 45}\n'
    assert len(ledger.history("u1")) == 1


def test_a_refused_deduction_exits_1_with_one_line_and_the_seed_json(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=10)

    as_json = run("deduct", "u1", "11", "--json")
    plain = run("deduct", "u1", "11")

    assert as_json.exit_code == 1
    assert as_json.stdout == '{"success": false, "monthlyRemaining": 10}\n'
    assert as_json.stderr == "Error: user 'u1' asked for 11 tokens but has 10 remaining\n"
    assert_error(plain, 1, "asked for 11 tokens but has 10 remaining")
    assert len(ledger.history("u1", success=False)) == 2


def test_deduct_refuses_a_context_that_is_not_a_json_object(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)

    for context in ("[1]", "{not json"):
        assert_error(
            run("deduct", "u1", "1", "--context", context), 2, "Invalid value for '--context'"
        )
    assert ledger.history() == []
