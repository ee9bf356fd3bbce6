"""The README's usage report example runs and prints what the README says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def run_example(title: str, directory: Path) -> tuple[str, str]:
    """What the section's one Python block prints when run, and the text block it shows."""
    text = section(title)
    (code,) = blocks(text, "python")
    (printed,) = blocks(text, "text")
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return completed.stdout, printed


def test_the_usage_reports_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    stdout, printed = run_example("Usage reports", tmp_path)

    assert stdout == printed
