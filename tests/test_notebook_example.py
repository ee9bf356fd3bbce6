"""``examples/notebook.py`` runs as a script and, cell by cell, as a notebook would run it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.py"
CELL_MARKER = re.compile(r"^# %%(.*)$", re.MULTILINE)


def code_cells(path: Path) -> list[str]:
    """The percent format's code cells: text after each ``# %%`` line, markdown left out."""
    parts = CELL_MARKER.split(path.read_text(encoding="utf-8"))
    cells = zip(parts[1::2], parts[2::2], strict=True)
    return [body for header, body in cells if "[markdown]" not in header]


def run_as_notebook(path: Path) -> list[Any]:
    """Run the cells in one namespace; return what each cell's last expression displays.

    Jupyter shows the value of a cell's last expression (``None`` shows
    nothing), through ``_repr_html_`` when the value has one.
    """
    namespace: dict[str, Any] = {"__name__": "__main__"}
    shown = []
    for cell in code_cells(path):
        tree = ast.parse(cell)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, str(path), "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), str(path), "eval"), namespace)
            if value is not None:
                shown.append(value)
    return shown


def test_the_notebook_runs_as_a_script() -> None:
    completed = subprocess.run(
        [sys.executable, str(NOTEBOOK)], capture_output=True, text=True, timeout=120, check=True
    )

    assert completed.stdout == "refused: asked for 20, 14 remaining\n"


def test_the_notebook_shows_a_status_and_histories_as_html_tables() -> None:
    shown = run_as_notebook(NOTEBOOK)

    assert [type(value).__name__ for value in shown] == ["TokenStatus", "History", "History"]
    status, resets, history = (value._repr_html_() for value in shown)
    assert "<td>alice</td><td>36</td><td>50</td><td>14</td>" in status
    assert resets.count("<td>reset</td>") == 1
    assert history.count("<tr>") == 6  # the header and five entries
    assert "<td>{&quot;query&quot;: &quot;transformers&quot;}</td>" in history
