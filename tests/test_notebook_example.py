"""``examples/notebook.py`` runs as a script and, cell by cell, as a notebook would run it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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

    assert [type(value).__name__ for value in shown] == [
        "TokenStatus",
        "History",
        "History",
        "UsageReport",
    ]
    status, resets, history, _ = (value._repr_html_() for value in shown)
    assert "<td>alice</td><td>36</td><td>50</td><td>14</td>" in status
    assert resets.count("<td>reset</td>") == 1
    assert history.count("<tr>") == 6  # the header and five entries
    assert "<td>{&quot;query&quot;: &quot;transformers&quot;}</td>" in history


def test_the_notebook_shows_usage_per_day_and_feature() -> None:
    """A line of the chart per feature; a day without a feature's use is 0 on its line."""
    usage = run_as_notebook(NOTEBOOK)[-1]

    assert [(row.day.isoformat(), row.feature, row.tokens) for row in usage] == [
        ("2026-01-31", "chat", 6),
        ("2026-01-31", "literature_search", 30),
        ("2026-02-01", "chat", 1),
        *(
            (f"2026-02-0{day}", feature, tokens)
            for day in (2, 3, 4)
            for feature, tokens in (("chat", day), ("literature_search", 5))
        ),
    ]
    assert "<td>literature_search</td><td>2026-01-31</td><td>30</td>" in usage._repr_html_()


def test_the_notebook_draws_usage_when_matplotlib_is_installed() -> None:
    pytest.importorskip("matplotlib", reason='the chart needs "token-ledger[charts]"')
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for cell in code_cells(NOTEBOOK):
        exec(compile(cell, str(NOTEBOOK), "exec"), namespace)

    lines = namespace["axes"].get_lines()
    assert [line.get_label() for line in lines] == ["chat", "literature_search"]
    assert list(lines[1].get_ydata()) == [30, 0, 5, 5, 5]
    namespace["plt"].close("all")


def test_the_notebook_runs_without_matplotlib() -> None:
    """Where matplotlib cannot be imported, the notebook shows the table and draws nothing."""
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None;"
        f" namespace = runpy.run_path({str(NOTEBOOK)!r}, run_name='__main__');"
        " print(namespace['plt'], len(namespace['usage']))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )

    assert completed.stdout.splitlines()[-1] == "None 9"
