"""``token-ledger sql postgres|sqlite`` prints the optional SQL; it needs no ledger."""

from __future__ import annotations

from click.testing import CliRunner

from cli.helpers import assert_error
from token_ledger.cli import cli
from token_ledger.sql import postgres_script, sqlite_script


def test_sql_postgres_prints_the_script_for_the_public_schema_in_utc() -> None:
    result = CliRunner().invoke(cli, ["sql", "postgres"])

    assert (result.exit_code, result.stdout) == (0, postgres_script())


def test_sql_postgres_takes_a_schema_and_a_time_zone() -> None:
    result = CliRunner().invoke(
        cli, ["sql", "postgres", "--schema", "billing", "--timezone", "Europe/Berlin"]
    )

    assert (result.exit_code, result.stdout) == (0, postgres_script("billing", "Europe/Berlin"))


def test_sql_postgres_counts_months_in_the_ledgers_time_zone_by_default() -> None:
    env = {"TOKEN_LEDGER_TIMEZONE": "America/New_York"}
    result = CliRunner().invoke(cli, ["sql", "postgres"], env=env)

    assert result.stdout == postgres_script(timezone="America/New_York")


def test_sql_postgres_refuses_an_unknown_time_zone() -> None:
    result = CliRunner().invoke(cli, ["sql", "postgres", "--timezone", "Mars/Olympus_Mons"])

    assert_error(result, 1, "unknown time zone 'Mars/Olympus_Mons'")


def test_sql_sqlite_prints_the_script() -> None:
    result = CliRunner().invoke(cli, ["sql", "sqlite"])

    assert (result.exit_code, result.stdout) == (0, sqlite_script())


def test_sql_sqlite_refuses_a_ledger_that_counts_months_elsewhere() -> None:
    result = CliRunner().invoke(cli, ["--timezone", "Europe/Berlin", "sql", "sqlite"])

    assert_error(result, 1, "calendar months in UTC only")


def test_sql_sqlite_takes_no_schema() -> None:
    result = CliRunner().invoke(cli, ["sql", "sqlite", "--schema", "billing"])

    assert_error(result, 2, "No such option '--schema'")
