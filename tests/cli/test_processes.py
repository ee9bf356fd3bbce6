"""The command line as cron runs it: real processes on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.conftest import postgres_database
from token_ledger import TokenLedger, Transaction

ENV_VARS = ("TOKEN_LEDGER_DATABASE_URL", "TOKEN_LEDGER_TIMEZONE")


def installed_script() -> str:
    """The console script that installing the package put beside this Python."""
    script = shutil.which("token-ledger", path=str(Path(sys.executable).parent))
    assert script is not None, "the token-ledger console script is not installed"
    return script


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if name not in ENV_VARS}
    return subprocess.run(
        command,
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_token_ledger_serves_the_guide_on_tokens_db(tmp_path: Path) -> None:
    python_m = [sys.executable, "-m", "token_ledger"]
    for args in (
        ["init"],
        ["account", "create", "u1", "--limit", "50"],
        ["deduct", "u1", "1", "--feature", "literature_search", "--context", '{"test": true}'],
    ):
        completed = run(python_m + args, tmp_path)
        assert completed.returncode == 0, completed.stderr

    status = run([*python_m, "status", "u1", "--json"], tmp_path)

    seed_keys = ("monthlyUsed", "monthlyLimit", "monthlyRemaining")
    assert {key: json.loads(status.stdout)[key] for key in seed_keys} == {
        "monthlyUsed": 1,
        "monthlyLimit": 50,
        "monthlyRemaining": 49,
    }
    assert (tmp_path / "tokens.db").exists()


def test_the_installed_script_reports_by_exit_status(tmp_path: Path) -> None:
    script = installed_script()
    env = {"TOKEN_LEDGER_DATABASE_URL": str(tmp_path / "ops.db")}
    run([script, "init"], tmp_path, env)
    run([script, "account", "create", "u1", "--limit", "1"], tmp_path, env)

    refused = run([script, "deduct", "u1", "5"], tmp_path, env)
    wrong = run([script, "deduct", "u1"], tmp_path, env)
    alerts = run([script, "alerts", "--failed-threshold", "0"], tmp_path, env)
    reset = run([script, "reset", "--all", "--json"], tmp_path, env)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == "Error: user 'u1' asked for 5 tokens but has 1 remaining\n"
    assert (wrong.returncode, wrong.stderr.count("\n")) == (2, 1)
    assert wrong.stderr.startswith("Error: Missing argument 'AMOUNT'.")
    assert alerts.returncode == 3
    assert "failed_transactions        1            0  yes" in alerts.stdout.splitlines()[3]
    assert (reset.returncode, reset.stdout) == (0, '{"reset_count": 0}\n')


def test_export_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path: Path) -> None:
    """``token-ledger export | head``: the reader leaves, the export stops quietly."""
    database = tmp_path / "ledger.db"
    with TokenLedger.sqlite(database) as ledger:
        ledger.open_account("u1", monthly_limit=10)
        entry = Transaction("u1", "deduct", 1, ledger.now(), balance_after=9)
        with ledger.repository.unit_of_work() as work:
            work.append_transactions([entry] * 20_000)

    with subprocess.Popen(
        [installed_script(), "--db", str(database), "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline().startswith("id,user_id,")
        process.stdout.close()
        stderr = process.stderr.read()
        process.wait(timeout=60)

    assert "Traceback" not in stderr
    assert process.returncode != 0


def test_importing_the_package_does_not_import_click() -> None:
    """Applications that never use the command line do not pay for it."""
    code = "import sys, token_ledger; print('click' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == "False"


def test_importing_the_command_line_does_not_import_tabulate() -> None:
    """tabulate adds a fifth to the start-up: only a command that draws a table imports it."""
    code = "import sys, token_ledger.cli; print('tabulate' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == "False"


@pytest.mark.postgres
def test_the_installed_script_serves_a_postgresql_url_from_the_environment(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The cron recipe on PostgreSQL: the URL (and its password) only in the environment."""
    database = postgres_database(request, tmp_path)
    script = installed_script()
    env = {"TOKEN_LEDGER_DATABASE_URL": database.url}

    created = run([script, "account", "create", "u1", "--limit", "10"], tmp_path, env)
    spent = run([script, "deduct", "u1", "4", "--json"], tmp_path, env)
    reset = run([script, "reset", "--all", "--json"], tmp_path, env)

    assert created.returncode == 0, created.stderr
    assert json.loads(spent.stdout) == {"success": True, "monthlyRemaining": 6}
    assert (reset.returncode, reset.stdout) == (0, '{"reset_count": 0}\n')
