"""The README's organisations example runs and prints what the README says it prints."""

from __future__ import annotations

from pathlib import Path

from test_readme_usage import run_example


def test_the_organisations_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    stdout, printed = run_example("Organisations and daily caps", tmp_path)

    assert stdout == printed
