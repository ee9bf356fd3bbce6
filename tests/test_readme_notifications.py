"""The README's section on threshold notifications runs as it is written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section_code() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Threshold notifications\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_example_of_threshold_notifications_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(section_code(), str(README), "exec"), namespace)

    ledger = namespace["ledger"]
    assert ledger.notification_cursor("mailer") == 1  # type: ignore[attr-defined]
    assert ledger.get_account("u1").thresholds is None  # type: ignore[attr-defined]
