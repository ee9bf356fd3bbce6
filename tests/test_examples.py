"""Every example runs, as a user would run it, in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_quickstart(directory: Path) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return completed.stdout


def test_quickstart_runs_on_a_sqlite_file_and_prints_the_seed_json(tmp_path: Path) -> None:
    output = run_quickstart(tmp_path)

    assert "status: {'monthlyUsed': 36, 'monthlyLimit': 50, 'monthlyRemaining': 14}" in output
    assert "refused: asked for 20, 14 remaining" in output
    assert (tmp_path / "tokens.db").exists()


def test_quickstart_run_twice_replays_its_idempotent_deduction(tmp_path: Path) -> None:
    run_quickstart(tmp_path)

    output = run_quickstart(tmp_path)

    assert "deduct: {'success': True, 'monthlyRemaining': 14}" in output
    assert "status: {'monthlyUsed': 36, 'monthlyLimit': 50, 'monthlyRemaining': 14}" in output


def test_importing_the_package_does_not_import_psycopg() -> None:
    code = "import sys, token_ledger; print('psycopg' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == "False"


def test_importing_the_package_does_not_import_matplotlib() -> None:
    """The usage chart of the notebook example is the only user of the ``charts`` extra."""
    code = (
        "import sys, token_ledger, token_ledger.usage, token_ledger.cli;"
        " print('matplotlib' in sys.modules)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == "False"
