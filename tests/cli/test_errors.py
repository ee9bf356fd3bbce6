"""Choosing the database and time zone, and every failure as one line with its exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.helpers import LedgerDatabase, Run, assert_error
from token_ledger import Clock, MonthlyResetPolicy, TokenLedger, system_clock
from token_ledger.cli import cli


def test_the_database_comes_from_the_environment(
    database: LedgerDatabase, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=10)

    result = CliRunner().invoke(
        cli, ["status", "u1", "--json"], env={"TOKEN_LEDGER_DATABASE_URL": database.url}
    )

    assert (result.exit_code, json.loads(result.stdout)["monthlyLimit"]) == (0, 10)


def test_the_db_option_wins_over_the_environment(
    database: LedgerDatabase, ledger: TokenLedger, tmp_path: Path
) -> None:
    ledger.open_account("u1", monthly_limit=10)
    elsewhere = str(tmp_path / "elsewhere.db")

    result = CliRunner().invoke(
        cli,
        ["--db", database.url, "status", "u1"],
        env={"TOKEN_LEDGER_DATABASE_URL": elsewhere},
    )

    assert result.exit_code == 0
    assert not Path(elsewhere).exists()


def test_without_db_the_ledger_is_tokens_db_in_the_current_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init"])

    assert result.exit_code == 0
    assert (tmp_path / "tokens.db").exists()


def test_the_time_zone_comes_from_the_option_or_the_environment(run: Run) -> None:
    """Months start at local midnight of the 1st in the zone the ledger is told."""

    def period_start(zone: str) -> str:
        return MonthlyResetPolicy(timezone=zone).period(system_clock()).start.isoformat()

    from_env = run(
        "account",
        "create",
        "u1",
        "--limit",
        "5",
        "--json",
        env={"TOKEN_LEDGER_TIMEZONE": "Asia/Tokyo"},
    )
    from_option = run(
        "--timezone", "America/New_York", "account", "create", "u2", "--limit", "5", "--json"
    )

    assert json.loads(from_env.stdout)["last_monthly_reset"] == period_start("Asia/Tokyo")
    assert json.loads(from_option.stdout)["last_monthly_reset"] == period_start("America/New_York")


@pytest.mark.parametrize(
    "url", ["postgresql://ops@db.example/app", "postgres://ops@db.example/app"]
)
def test_a_postgres_url_opens_the_ledger_with_token_ledger_postgres(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the routing: the PostgreSQL adapter brings its own tests (and this classmethod)."""
    opened: list[tuple[str, MonthlyResetPolicy]] = []

    def postgres(
        database: str, *, policy: MonthlyResetPolicy, clock: Clock, thresholds: object
    ) -> TokenLedger:
        opened.append((database, policy))
        return TokenLedger.memory(policy=policy, clock=clock)

    monkeypatch.setattr(TokenLedger, "postgres", postgres, raising=False)
    result = CliRunner().invoke(cli, ["--db", url, "--timezone", "Europe/Berlin", "health"])

    assert result.exit_code == 0
    assert opened == [(url, MonthlyResetPolicy(timezone="Europe/Berlin"))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bogus",), "No such option '--bogus'. (see 'token-ledger --help')"),
        (("nosuch",), "No such command 'nosuch'."),
        (("status",), "Missing argument 'USER'. (see 'token-ledger status --help')"),
        (("deduct", "u1", "x"), "'x' is not a valid integer"),
        (("account", "create", "u1"), "Missing option '--limit'"),
        (("history", "--type", "spend"), "Invalid value for '--type'"),
        (("export", "--format", "xml"), "Invalid value for '--format'"),
        (("reset",), "give either USER or --all (see 'token-ledger reset --help')"),
        (("reset", "u1", "--all"), "give either USER or --all"),
        (("reset", "u1", "--batch-size", "5"), "--batch-size goes with --all"),
        (
            ("account", "create", "u1", "--limit", "5", "--window-cap", "day"),
            "Invalid value for '--window-cap': 'day' is not UNIT=CAP",
        ),
        (("account", "set-window-caps", "u1"), "Missing argument 'UNIT=CAP...'"),
        (("account", "move", "u1"), "Missing argument 'ORG'"),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_2(
    run: Run, args: tuple[str, ...], message: str
) -> None:
    assert_error(run(*args), 2, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "ghost"), "no token account for user 'ghost'"),
        (("account", "show", "ghost"), "no token account for user 'ghost'"),
        (("deduct", "u1", "0"), "amount must be between 1 and"),
        (("account", "set-limit", "u1", "0"), "monthly_limit must be between 1 and"),
        (("account", "create", "", "--limit", "5"), "user_id must be a non-empty string"),
        (("account", "create", "u2", "--limit", "5", "--organisation", "ghost"), "'ghost'"),
        (("account", "set-window-caps", "u1", "day=0"), "the day cap must be between 1 and"),
        (("account", "move", "u1", "ghost"), "no token account for user 'ghost'"),
        (("account", "move", "ghost", "u1"), "no token account for user 'ghost'"),
        (("account", "move", "u1", "u1"), "'u1' cannot be its own organisation"),
        (("account", "leave-organisation", "ghost"), "no token account for user 'ghost'"),
        (("account", "clear-window-caps", "ghost"), "no token account for user 'ghost'"),
        (("reset", "--all", "--batch-size", "0"), "batch_size must be between 1 and"),
        (("history", "--limit", "10001"), "limit must be at most 10000"),
        (("--timezone", "Mars/Olympus", "status", "u1"), "unknown time zone 'Mars/Olympus'"),
        (("export", "--output", "missing/log.csv"), "cannot write to 'missing/log.csv'"),
    ],
)
def test_a_refusal_of_the_ledger_is_one_line_and_exit_1(
    run: Run, ledger: TokenLedger, args: tuple[str, ...], message: str
) -> None:
    ledger.open_account("u1", monthly_limit=10)

    assert_error(run(*args), 1, message)


def test_an_idempotency_key_reused_for_another_amount_is_refused(
    run: Run, ledger: TokenLedger
) -> None:
    ledger.open_account("u1", monthly_limit=10)
    run("deduct", "u1", "1", "--idempotency-key", "req-1")

    assert_error(
        run("deduct", "u1", "2", "--idempotency-key", "req-1"),
        1,
        "idempotency key 'req-1' was already used",
    )


def test_an_empty_db_is_refused_rather_than_a_throwaway_database() -> None:
    """``--db "$UNSET"`` must not open a temporary SQLite database and call it healthy."""
    for command in ("init", "health"):
        result = CliRunner().invoke(cli, ["--db", "", command])

        assert_error(result, 2, "is empty: give a SQLite file or a postgresql:// URL")


@pytest.mark.parametrize(
    "url", ["memory://", "sqlite:///:memory:", "sqlite://:memory:", ":memory:"]
)
@pytest.mark.parametrize("command", ["init", "health"])
def test_an_in_memory_ledger_is_refused_and_no_file_is_made(
    tmp_path: Path, url: str, command: str
) -> None:
    """``--db memory://`` once made a SQLite file named ``memory:`` and said "Ledger ready."."""
    result = CliRunner().invoke(cli, ["--db", url, command])

    assert_error(result, 1, f"{url!r} is an in-memory ledger, which keeps nothing between commands")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x", "unsupported database URL scheme mysql://: give postgresql://..., postgres"),
        ("postgresql+psycopg2://ops@db/app", "unsupported database URL scheme postgresql+psycopg2"),
        ("memory://x", "memory:// takes nothing after it"),
        ("memory:", "starts with memory: but is no URL"),
        ("sqlite:///", "sqlite:/// needs a path"),
        ("tokens\x00.db", "NUL"),
    ],
)
@pytest.mark.parametrize("command", ["init", "health"])
def test_a_url_the_library_refuses_is_one_line_and_exit_1_and_makes_no_file(
    tmp_path: Path, url: str, message: str, command: str
) -> None:
    result = CliRunner().invoke(cli, ["--db", url, command])

    assert_error(result, 1, message)
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_url_names_the_same_file_as_its_path(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    absolute = f"sqlite:///{tmp_path / 'data' / 'ledger.db'}"

    init = CliRunner().invoke(cli, ["--db", "sqlite:///data/ledger.db", "init"])
    create = CliRunner().invoke(cli, ["--db", absolute, "account", "create", "u1", "--limit", "7"])

    assert (init.exit_code, init.stdout, create.exit_code) == (0, "Ledger ready.\n", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    with TokenLedger.sqlite(tmp_path / "data" / "ledger.db") as ledger:
        assert ledger.status("u1").monthly_limit == 7


def test_a_missing_file_behind_a_sqlite_url_is_no_ledger(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--db", "sqlite:///missing.db", "health"])

    assert_error(
        result, 1, "no ledger at 'sqlite:///missing.db': create it with 'token-ledger init'"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_no_ledger(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--db", str(tmp_path), "health"])

    assert_error(result, 1, f"no ledger at '{tmp_path}'")


def test_a_file_that_is_not_a_ledger_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 100, encoding="utf-8")

    result = CliRunner().invoke(cli, ["--db", str(path), "health"])

    assert_error(result, 1, "SQLite failed: file is not a database")


def test_token_ledger_alone_shows_the_commands() -> None:
    result = CliRunner().invoke(cli, [])

    assert result.exit_code == 2
    assert "Commands:" in result.stderr
    assert "Exit status: 0 done, 1 refused or failed" in result.stderr
