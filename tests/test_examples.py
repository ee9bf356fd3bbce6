"""Every example runs, as a user would run it, in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_and_prints_the_seed_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert "status: {'monthlyUsed': 36, 'monthlyLimit': 50, 'monthlyRemaining': 14}" in (
        completed.stdout
    )
    assert "refused: asked for 20, 14 remaining" in completed.stdout


def test_importing_the_package_does_not_import_psycopg() -> None:
    code = "import sys, token_ledger; print('psycopg' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert completed.stdout.strip() == "False"
