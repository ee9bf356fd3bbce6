"""The README's organisations example runs and prints what the README says it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_readme_usage import blocks, section


def test_the_organisations_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    organisations = section("Organisations and daily caps")
    (code,) = blocks(organisations, "python")
    (printed,) = blocks(organisations, "text")

    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert completed.stdout == printed
