"""How a command prints its result: ``--json``, or a table drawn by tabulate in ``--fmt``.

Every command that shows a record or a list goes through here, so they all print cells alike
(``-`` for none, ``yes``/``no``, numbers to the right), refuse ``--json`` with ``--fmt`` alike,
and import tabulate only when they draw a table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from click.core import ParameterSource

RECORD_FORMAT = "plain"  # rows of name and value, without rules
TABLE_FORMAT = "simple"  # a header, a rule of dashes, the rows

Decorated = TypeVar("Decorated", bound=Callable[..., Any])


# the options


def _one_output(ctx: click.Context) -> None:
    """``--json`` and ``--fmt`` both choose the output: refused together, in either order."""
    sources = [ctx.get_parameter_source(name) for name in ("as_json", "fmt")]
    if all(source is ParameterSource.COMMANDLINE for source in sources):
        raise click.UsageError("give either --json or --fmt", ctx)


def _json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    _one_output(ctx)
    return value


def _table_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """One of tabulate's formats; tabulate is imported only when ``--fmt`` is given."""
    _one_output(ctx)
    if ctx.get_parameter_source("fmt") is ParameterSource.DEFAULT:
        return value
    from tabulate import tabulate_formats  # type: ignore[import-untyped, unused-ignore]

    if value not in tabulate_formats:
        raise click.BadParameter(
            f"{value!r} is not a table format: choose one of {', '.join(tabulate_formats)}"
        )
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_json_flag,
    help="Print one line of JSON instead of text.",
)


def fmt_option(default: str) -> Callable[[Decorated], Decorated]:
    """``--fmt``, as sqlite-utils has it: any of tabulate's table formats."""
    return click.option(
        "--fmt",
        default=default,
        show_default=True,
        callback=_table_format,
        metavar="FORMAT",
        help="Table format: any of tabulate's (simple, plain, github, grid, psql, tsv, html...).",
    )


# tables


def cell(value: object) -> str:
    """A value as a table shows it: ``-`` for none, ``yes``/``no``, instants to the second."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _is_numeric(column: list[object]) -> bool:
    """Whole numbers, some of them missing: aligned to the right."""
    numbers = [value for value in column if value is not None]
    return bool(numbers) and all(
        isinstance(value, int) and not isinstance(value, bool) for value in numbers
    )


def echo_table(
    rows: Sequence[Sequence[object]], headers: Sequence[str] = (), fmt: str = TABLE_FORMAT
) -> None:
    """A table drawn by tabulate in ``fmt``, numbers to the right; no ``headers``: name, value.

    The cells are text already (``-`` for none, ``yes``/``no``), so tabulate parses no numbers
    out of them: a user id ``007`` stays ``007``. tabulate is imported here, not with the
    module, because it adds a fifth to the command line's start-up time.
    """
    from tabulate import tabulate  # type: ignore[import-untyped, unused-ignore]

    columns = len(headers) or max((len(row) for row in rows), default=0)
    if not columns:
        return
    align = ["right" if _is_numeric([row[i] for row in rows]) else "left" for i in range(columns)]
    cells = [[cell(value) for value in row] for row in rows]
    click.echo(tabulate(cells, list(headers), tablefmt=fmt, colalign=align, disable_numparse=True))


# JSON and text


def json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def echo_json(value: object) -> None:
    click.echo(json.dumps(value, default=json_value))


def echo_record(fields: dict[str, object], as_json: bool, fmt: str) -> None:
    if as_json:
        echo_json(fields)
    else:
        echo_table(list(fields.items()), fmt=fmt)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
