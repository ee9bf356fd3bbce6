"""--fmt: the tables drawn by tabulate, in any of its formats, as sqlite-utils draws them."""

from __future__ import annotations

import attrs
import click
import pytest
from tabulate import tabulate_formats

from cli.helpers import Run, assert_error
from token_ledger import TokenLedger
from token_ledger.cli import cli

TABLE_COMMANDS = [
    ("account", "create", "u2", "--limit", "5"),
    ("account", "show", "u1"),
    ("account", "set-limit", "u1", "20"),
    ("account", "set-window-caps", "u1", "day=5"),
    ("status", "u1"),
    ("health",),
    ("alerts",),
    ("history",),
    ("usage", "--by", "feature"),
]


def command_with_fmt(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found += command_with_fmt(command, f"{path} ")
        elif any(param.name == "fmt" for param in command.params):
            found.append(path)
    return found


def test_every_command_that_prints_a_table_has_fmt() -> None:
    tables = [
        "account create",
        "account show",
        "account set-limit",
        "account set-time-zone",
        "status",
        "health",
        "account set-thresholds",
        "account clear-thresholds",
        "account move",
        "account leave-organisation",
        "account set-window-caps",
        "account clear-window-caps",
    ]
    assert sorted(command_with_fmt(cli)) == sorted(
        [*tables, "alerts", "reconcile", "history", "notifications", "usage"]
    )


def test_a_table_is_tabulates_simple_format_by_default(run: Run, ledger: TokenLedger) -> None:
    """A header, a rule of dashes, numbers to the right, ``-`` where there is no value."""
    ledger.open_account("u1", monthly_limit=10)

    result = run("alerts")

    assert result.stdout.splitlines() == [
        "alert                  value    threshold  triggered    description",
        "-------------------  -------  -----------  -----------  "
        "---------------------------------------------------------",
        "stale_resets               0            0  no           "
        "accounts whose reset has been pending for more than 1 day",
        "failed_transactions        0           10  no           "
        "refused operations in the last 1 hour",
        "high_usage                 0            -  no           "
        "accounts above 90% of their limit this period",
    ]


def test_a_record_is_rows_of_name_and_value_by_default(run: Run) -> None:
    """A record has no header, so no rules either: tabulate's plain format."""
    result = run("account", "create", "007", "--limit", "50")

    assert result.stdout.splitlines()[:2] == ["user_id              007", "monthly_limit        50"]


@pytest.mark.parametrize("args", TABLE_COMMANDS, ids=[" ".join(a[:2]) for a in TABLE_COMMANDS])
def test_fmt_draws_the_table_in_another_format(
    run: Run, ledger: TokenLedger, args: tuple[str, ...]
) -> None:
    ledger.open_account("u1", monthly_limit=10)
    ledger.deduct("u1", 1)

    result = run(*args, "--fmt", "psql")

    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("+-")
    assert lines[-1].startswith("+-")
    assert all(line[0] in "+|" for line in lines)


def test_fmt_draws_the_reconcile_table(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)
    account = ledger.get_account("u1")
    with ledger.repository.unit_of_work() as work:
        work.save_accounts([attrs.evolve(account, monthly_tokens_used=9)])

    result = run("reconcile", "--fmt", "pipe")

    assert result.exit_code == 3
    assert result.stdout.splitlines() == [
        "| user_id   | field               |   stored |   expected |",
        "|:----------|:--------------------|---------:|-----------:|",
        "| u1        | monthly_tokens_used |        9 |          0 |",
    ]


def test_fmt_takes_every_tabulate_format(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)

    for fmt in tabulate_formats:
        result = run("history", "--fmt", fmt)
        assert (result.exit_code, result.stderr) == (0, ""), fmt


def test_cells_are_shown_as_given_not_parsed_as_numbers(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("007", monthly_limit=10)
    ledger.deduct("007", 1, feature="1.50")

    result = run("history", "--fmt", "github")

    [row] = result.stdout.splitlines()[2:]
    assert [cell.strip() for cell in row.split("|")][3] == "007"
    assert [cell.strip() for cell in row.split("|")][8] == "1.50"


def test_an_unknown_format_is_a_wrong_command_line(run: Run, ledger: TokenLedger) -> None:
    ledger.open_account("u1", monthly_limit=10)

    result = run("status", "u1", "--fmt", "nope")

    assert_error(result, 2, "Invalid value for '--fmt': 'nope' is not a table format")
    assert "github" in result.stderr


@pytest.mark.parametrize(
    "options",
    [("--json", "--fmt", "grid"), ("--fmt", "grid", "--json")],
    ids=["json-first", "fmt-first"],
)
def test_json_and_fmt_together_are_refused_before_anything_is_done(
    run: Run, ledger: TokenLedger, options: tuple[str, ...]
) -> None:
    result = run("account", "create", "u1", "--limit", "5", *options)

    assert_error(result, 2, "give either --json or --fmt")
    assert ledger.health().total_users == 0
