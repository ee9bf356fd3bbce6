"""Organisations and spending windows on the command line: ``account create --organisation
--window-cap``, ``account move|leave-organisation|set-window-caps|clear-window-caps``, and how
``status``, ``account show`` and ``history`` show them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cli.helpers import Run, assert_error
from token_ledger import TokenLedger
from token_ledger.results import WindowStatus


def record(run: Run, *args: str) -> dict[str, Any]:
    """A command's ``--json`` record, once it exited 0."""
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    fields: dict[str, Any] = json.loads(result.stdout)
    return fields


def table(run: Run, *args: str) -> dict[str, str]:
    """A record's table as name and value, once it exited 0."""
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    rows = [line.split(maxsplit=1) for line in result.stdout.splitlines()]
    return {name: value for name, value in rows}


def window_text(window: WindowStatus) -> str:
    until = window.resets_at.isoformat(sep=" ", timespec="seconds")
    return f"{window.used} of {window.cap} used, {window.remaining} remaining, until {until}"


# account create


def test_account_create_opens_a_member_with_window_caps(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("org", monthly_limit=1000)

    row = record(
        run,
        *("account", "create", "u1", "--limit", "50", "--organisation", "org"),
        *("--window-cap", "day=30", "--window-cap", "hour=20"),
    )

    stored = ledger.get_account("u1")
    assert (stored.organisation_id, [(w.unit, w.cap) for w in stored.windows]) == (
        "org",
        [("hour", 20), ("day", 30)],
    )
    assert row["organisation_id"] == "org"
    opened = stored.created_at.isoformat()  # a window counts from when it was capped
    assert row["windows"] == [
        {"unit": "hour", "cap": 20, "used": 0, "start": opened},
        {"unit": "day", "cap": 30, "used": 0, "start": opened},
    ]
    assert list(row)[-3:] == ["organisation_id", "windows", "reset_pending"]


def test_account_create_shows_each_window_as_a_row(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("org", monthly_limit=1000)

    shown = table(
        run,
        *("account", "create", "u1", "--limit", "50"),
        *("--organisation", "org", "--window-cap", "week=40"),
    )

    assert shown["organisation_id"] == "org"
    opened = ledger.get_account("u1").created_at.replace(microsecond=0).isoformat(sep=" ")
    assert (shown["hour_window"], shown["day_window"], shown["week_window"]) == (
        "-",
        "-",
        f"0 of 40 used since {opened}",
    )


def test_account_create_with_exist_ok_keeps_the_stored_organisation_and_caps(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("org", monthly_limit=1000)
    ledger.open_account("u1", monthly_limit=50)

    row = record(
        run,
        *("account", "create", "u1", "--limit", "70", "--exist-ok"),
        *("--organisation", "org", "--window-cap", "day=5"),
    )

    assert (row["monthly_limit"], row["organisation_id"], row["windows"]) == (50, None, [])


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        (("day",), "'day' is not UNIT=CAP with UNIT one of hour, day, week, such as day=1000"),
        (("month=5",), "'month=5' is not UNIT=CAP with UNIT one of hour, day, week"),
        (("=5",), "'=5' is not UNIT=CAP"),
        (("day=x",), "'day=x': 'x' is not a whole number of tokens"),
        (("day=1.5",), "'day=1.5': '1.5' is not a whole number of tokens"),
        (("day=5", "hour=2", "day=6"), "day is given twice ('day=6')"),
    ],
    ids=["no-cap", "unknown-unit", "no-unit", "not-a-number", "a-fraction", "twice"],
)
def test_a_window_cap_that_does_not_parse_is_a_wrong_command_line(
    run: Run, ledger: TokenLedger, caps: tuple[str, ...], message: str
) -> None:
    options = [arg for cap in caps for arg in ("--window-cap", cap)]
    ledger.open_account("u1", monthly_limit=50)

    created = run("account", "create", "u2", "--limit", "5", *options)
    changed = run("account", "set-window-caps", "u1", *caps)

    assert_error(created, 2, f"Invalid value for '--window-cap': {message}")
    assert_error(changed, 2, f"Invalid value for 'UNIT=CAP...': {message}")
    assert ledger.health().total_users == 1
    assert ledger.get_account("u1").windows == ()


@pytest.mark.parametrize("cap", ["0", "-5", str(2**63)])
def test_a_window_cap_out_of_range_is_refused_by_the_ledger(
    run: Run, ledger: TokenLedger, cap: str
) -> None:
    result = run("account", "create", "u1", "--limit", "5", "--window-cap", f"day={cap}")

    assert_error(result, 1, "the day cap must be between 1 and")
    assert ledger.health().total_users == 0


def test_an_organisation_that_does_not_exist_is_refused(run: Run, ledger: TokenLedger) -> None:
    result = run("account", "create", "u1", "--limit", "5", "--organisation", "ghost")

    assert_error(result, 1, "no token account for user 'ghost'")
    assert ledger.health().total_users == 0


# account move and leave-organisation


def test_account_move_makes_the_account_a_member_from_now_on(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("org", monthly_limit=1000)
    ledger.open_account("u1", monthly_limit=50)
    ledger.deduct("u1", 10)

    shown = table(run, "account", "move", "u1", "org")

    assert (shown["organisation_id"], shown["monthly_tokens_used"]) == ("org", "10")
    assert ledger.status("org").monthly_used == 0  # what u1 spent stays spent where it was
    [moved] = ledger.history("u1", operation_type="limit_change")
    assert moved.operation_context == {
        "previous_limit": 50,
        "previous_organisation": None,
        "organisation": "org",
    }


def test_account_move_to_another_organisation_then_leave(run: Run, ledger: TokenLedger) -> None:
    for org in ("org-a", "org-b"):
        ledger.open_account(org, monthly_limit=1000)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org-a")

    moved = record(run, "account", "move", "u1", "org-b")
    left = record(run, "account", "leave-organisation", "u1")

    assert (moved["organisation_id"], left["organisation_id"]) == ("org-b", None)
    assert ledger.get_account("u1").organisation_id is None
    contexts = [e.operation_context for e in ledger.history("u1", operation_type="limit_change")]
    assert [(c["previous_organisation"], c["organisation"]) for c in contexts] == [
        ("org-b", None),
        ("org-a", "org-b"),
    ]


def test_an_organisation_cannot_join_one_of_its_own_members(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("org", monthly_limit=1000)
    ledger.open_account("team", monthly_limit=500, organisation_id="org")
    ledger.open_account("u1", monthly_limit=50, organisation_id="team")

    result = run("account", "move", "org", "u1")

    assert_error(result, 1, "'org' cannot join 'u1', which is one of its own members")
    assert ledger.get_account("org").organisation_id is None


@pytest.mark.parametrize(
    "args", [("move", "u1", "org-b"), ("leave-organisation", "u1")], ids=["move", "leave"]
)
def test_an_account_holding_reservations_cannot_move(
    run: Run, ledger: TokenLedger, args: tuple[str, ...]
) -> None:
    for org in ("org-a", "org-b"):
        ledger.open_account(org, monthly_limit=1000)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org-a")
    ledger.reserve("u1", 5)

    result = run("account", *args)

    assert_error(result, 1, "account 'u1' holds a reservation")
    assert ledger.get_account("u1").organisation_id == "org-a"


# account set-window-caps and clear-window-caps


def test_set_window_caps_replaces_the_caps_and_a_window_that_stays_keeps_its_use(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=100, window_caps={"hour": 20, "day": 50})
    ledger.deduct("u1", 8)

    row = record(run, "account", "set-window-caps", "u1", "day=60", "week=90")

    assert [(w["unit"], w["cap"], w["used"]) for w in row["windows"]] == [
        ("day", 60, 8),
        ("week", 90, 0),
    ]
    [change] = ledger.history("u1", operation_type="limit_change")
    assert change.operation_context["window_caps"] == {"day": 60, "week": 90}
    assert change.operation_context["previous_window_caps"] == {"hour": 20, "day": 50}


def test_clear_window_caps_leaves_the_period_as_the_only_cap(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=100, window_caps={"day": 5})

    shown = table(run, "account", "clear-window-caps", "u1")

    assert [shown[f"{unit}_window"] for unit in ("hour", "day", "week")] == ["-", "-", "-"]
    assert ledger.get_account("u1").windows == ()
    assert ledger.deduct("u1", 50).success


# what status, account show and history show


def test_status_shows_each_window_and_the_organisation(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("org", monthly_limit=1000, window_caps={"day": 250})
    ledger.open_account("u1", monthly_limit=500, organisation_id="org", window_caps={"day": 300})
    ledger.deduct("u1", 200)

    shown = table(run, "status", "u1")
    fields = record(run, "status", "u1")

    current = ledger.status("u1")
    [day] = current.windows
    assert (day.used, day.remaining) == (200, 100)
    assert (shown["hour_window"], shown["day_window"], shown["week_window"]) == (
        "-",
        window_text(day),
        "-",
    )
    assert shown["day_window"].startswith("200 of 300 used, 100 remaining, until ")
    assert (shown["organisation_id"], shown["organisation_remaining"]) == ("org", "50")
    assert (shown["total_remaining"], shown["available"]) == ("100", "50")
    assert fields["windows"] == [
        {
            "unit": "day",
            "cap": 300,
            "used": 200,
            "remaining": 100,
            "resetsAt": day.resets_at.isoformat(),
        }
    ]
    assert (fields["organisationId"], fields["organisationRemaining"]) == ("org", 50)
    assert fields["available"] == 50


def test_status_windows_are_what_holds_leave(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=500, window_caps={"hour": 30})
    ledger.deduct("u1", 10)
    ledger.reserve("u1", 5)

    [hour] = record(run, "status", "u1")["windows"]

    assert (hour["used"], hour["remaining"]) == (10, 15)


def test_account_show_keeps_an_ended_window_and_status_starts_it_again(
    run: Run, past: TokenLedger
) -> None:
    """The guide's "table vs view", for windows: the stored use stands for 0 once its
    window has ended, as the stored usage does once its period has."""
    past.open_account("u1", monthly_limit=50, window_caps={"day": 10})
    past.deduct("u1", 4)

    stored = table(run, "account", "show", "u1")
    row = record(run, "account", "show", "u1")
    current = record(run, "status", "u1")

    # counted since the account was opened with its cap, at noon
    assert stored["day_window"] == "4 of 10 used since 2020-01-15 12:00:00+00:00"
    assert row["windows"] == [
        {"unit": "day", "cap": 10, "used": 4, "start": "2020-01-15T12:00:00+00:00"}
    ]
    [day] = current["windows"]
    assert (day["used"], day["remaining"]) == (0, 10)


def test_a_members_deduction_shows_the_organisations_share_in_its_history(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("org", monthly_limit=1000)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org")

    deducted = run("deduct", "u1", "7", "--feature", "search")
    shares = json.loads(run("history", "--user", "org", "--json").stdout)
    drawn = run("history", "--user", "org", "--fmt", "tsv")

    assert (deducted.exit_code, deducted.stdout) == (
        0,
        "Deducted 7 tokens from 'u1': 43 remaining.\n",
    )
    [member_entry] = ledger.history("u1")
    [share] = shares
    assert share["user_id"] == "org"
    assert (share["operation_type"], share["amount"], share["feature"]) == ("deduct", 7, "search")
    assert share["member_entry_id"] == member_entry.id
    assert share["operation_context"] == {"member": "u1"}
    assert ledger.status("org").monthly_used == 7
    header, row = (
        [cell.strip() for cell in line.split("\t")] for line in drawn.stdout.splitlines()
    )
    assert dict(zip(header, row, strict=True))["member_entry_id"] == str(member_entry.id)


def test_a_deduction_the_organisation_cannot_cover_is_refused(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("org", monthly_limit=5)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org")

    as_json = run("deduct", "u1", "6", "--json")
    plain = run("deduct", "u1", "6")

    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["success"] is False
    assert_error(plain, 1, "user 'u1' asked for 6 tokens but has 5 remaining")
    refused = ledger.history("u1", success=False)
    assert [entry.operation_context for entry in refused] == [
        {"refused_by": "org", "available": 5}
    ] * 2
    assert ledger.history("org") == []


def test_a_deduction_past_a_window_cap_is_refused(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=50, window_caps={"day": 5})

    assert run("deduct", "u1", "4").exit_code == 0
    assert_error(run("deduct", "u1", "2"), 1, "user 'u1' asked for 2 tokens but has 1 remaining")


def test_usage_counts_a_members_tokens_once_and_organisation_reports_its_budget(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("org", monthly_limit=1000)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org")
    ledger.open_account("u2", monthly_limit=50)
    ledger.deduct("org", 4)
    ledger.deduct("u1", 7)
    ledger.deduct("u2", 2)

    def tokens(*args: str) -> dict[str, int]:
        result = run("usage", "--by", "user", *args, "--json")
        assert result.exit_code == 0, result.stderr
        return {row["user_id"]: row["tokens"] for row in json.loads(result.stdout)}

    assert tokens() == {"org": 4, "u1": 7, "u2": 2}
    assert tokens("--organisation", "org") == {"org": 4, "u1": 7}
    assert tokens("--organisation", "u2") == {"u2": 2}
