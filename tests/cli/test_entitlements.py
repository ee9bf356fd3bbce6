"""Grant priority and voiding, rollover caps and an account's own zone, through click's runner."""

from __future__ import annotations

import json

from cli.helpers import Run, assert_error
from token_ledger import TokenLedger


def test_a_grant_with_a_priority_is_spent_first_and_void_grant_takes_one_back(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=1)
    later = json.loads(run("grant", "u1", "5", "--json").stdout)["reference"]
    first = json.loads(run("grant", "u1", "5", "--priority", "-1", "--json").stdout)["reference"]
    ledger.deduct("u1", 3)

    voided = run("void-grant", later, "--reason", "chargeback")
    again = run("void-grant", later)
    unknown = run("void-grant", "nope")

    assert voided.stdout == f"Voided grant {later} of 'u1': 5 tokens taken back.\n"
    assert_error(again, 1, "is voided already")
    assert_error(unknown, 1, "no grant 'nope'")
    assert [(g.id, g.remaining) for g in ledger.get_account("u1").grants] == [(first, 3)]
    assert_error(run("grant", "u1", "5", "--priority", str(2**31)), 1, "priority must be")


def test_account_create_takes_a_zone_and_a_rollover_cap_and_set_time_zone_moves_it(
    run: Run, ledger: TokenLedger
) -> None:
    created = run(
        "account",
        "create",
        "u1",
        "--limit",
        "10",
        "--time-zone",
        "Asia/Kolkata",
        "--rollover-cap",
        "4",
        "--json",
    )
    moved = run("account", "set-time-zone", "u1", "America/Chicago", "--json")
    capped = run("account", "set-limit", "u1", "--rollover-cap", "2", "--json")
    cleared = run("account", "set-time-zone", "u1", "--json")

    assert json.loads(created.stdout)["time_zone"] == "Asia/Kolkata"
    assert json.loads(created.stdout)["rollover_cap"] == 4
    assert json.loads(moved.stdout)["time_zone"] == "America/Chicago"
    assert json.loads(capped.stdout)["rollover_cap"] == 2
    assert json.loads(cleared.stdout)["time_zone"] is None
    assert_error(run("account", "set-time-zone", "u1", "Mars/Olympus"), 1, "unknown time zone")
    assert ledger.get_account("u1").rollover_cap == 2
