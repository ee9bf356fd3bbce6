"""The log of ledger entries: ``history`` shows a page of it, ``export`` writes all of it.

Both take the same filters, named as ``TokenLedger.history`` names them, and read the log by
keyset pages, so a long log never sits in memory. ``export`` writes CSV or JSON lines, and
replaces its output file only once the export is complete.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import click

from token_ledger.application import TokenLedger
from token_ledger.cli import values
from token_ledger.cli.output import (
    TABLE_FORMAT,
    Decorated,
    echo_json,
    echo_table,
    fmt_option,
    json_option,
    json_value,
    plural,
)
from token_ledger.cli.root import Refused, cli, open_ledger
from token_ledger.storage import paged
from token_ledger.transactions import OperationType, Transaction

HISTORY_PAGE_SIZE = 100
EXPORT_PAGE_SIZE = 1000


def _entry_columns() -> tuple[str, ...]:
    """The keys of :meth:`Transaction.to_dict`, in its order: the one list of the log's columns."""
    sample = Transaction("-", OperationType.DEDUCT, 0, datetime.fromtimestamp(0, timezone.utc), 0)
    return tuple(sample.to_dict())


ENTRY_COLUMNS = _entry_columns()


def _entry_filters(command: Decorated) -> Decorated:
    """The options of ``history`` and ``export``, named as ``TokenLedger.history`` names them."""
    options = (
        click.option("--user", "user_id", help="Only this user's entries."),
        click.option(
            "--type",
            "operation_type",
            type=click.Choice([kind.value for kind in OperationType]),
            help="Only entries of this type.",
        ),
        click.option("--feature", help="Only entries of this feature."),
        click.option(
            "--success/--failed", default=None, help="Only successful, or only refused, entries."
        ),
        click.option(
            "--since", callback=values.instant, metavar="INSTANT", help="Entries at or after this."
        ),
        click.option(
            "--until", callback=values.instant, metavar="INSTANT", help="Entries before this."
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@_entry_filters
@click.option("--limit", type=int, default=HISTORY_PAGE_SIZE, show_default=True, help="Page size.")
@click.option("--before-id", type=int, help="Entries older than this id: the next page.")
@json_option
@fmt_option(TABLE_FORMAT)
def history(limit: int, before_id: int | None, as_json: bool, fmt: str, **filters: Any) -> None:
    """Ledger entries, newest first, a page at a time."""
    page = open_ledger().history(**filters, limit=limit, before_id=before_id)
    if as_json:
        echo_json(page.to_dicts())
        return
    columns = (
        *("id", "created_at", "user_id", "operation_type", "amount", "success"),
        *("balance_after", "feature", "member_entry_id", "operation_context"),
    )
    echo_table([[getattr(entry, c) for c in columns] for entry in page], columns, fmt)
    if len(page) == limit:
        click.echo(f"Older entries: --before-id {page[-1].id}", err=True)


@cli.command()
@_entry_filters
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file, replaced only once the export is complete.",
)
def export(output_format: str, output: str, **filters: Any) -> None:
    """The ledger entries as CSV or JSON lines, newest first, read a page at a time."""
    ledger = open_ledger()
    count = 0
    with _replaced_when_complete(output) as stream:
        write = _csv_writer(stream) if output_format == "csv" else _jsonl_writer(stream)
        for entry in _every_entry(ledger, filters):
            write(entry)
            count += 1
    click.echo(f"Exported {plural(count, 'entry', 'entries')}.", err=True)


@contextmanager
def _replaced_when_complete(path: str) -> Iterator[IO[str]]:
    """Standard output for ``-``; otherwise a file that only a complete export replaces.

    The export goes to a temporary file beside the target, renamed over it at
    the end: a failed export leaves yesterday's file as it was, never half of one.
    """
    if path == "-":
        yield sys.stdout
        return
    target = Path(path)
    try:
        stream = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, then renamed
            "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.", delete=False
        )
    except OSError as error:
        raise Refused(f"cannot write to {path!r}: {error.strerror}") from error
    try:
        with stream:
            yield stream
        os.replace(stream.name, target)
    except BaseException:
        Path(stream.name).unlink(missing_ok=True)
        raise


def _every_entry(ledger: TokenLedger, filters: dict[str, Any]) -> Iterator[Transaction]:
    """Every matching entry by keyset pages, so memory holds one page however long the log."""
    return paged(
        lambda before: ledger.history(**filters, before_id=before, limit=EXPORT_PAGE_SIZE),
        lambda entry: entry.id,
        EXPORT_PAGE_SIZE,
    )


def _csv_value(value: object) -> object:
    """A value of :meth:`Transaction.to_dict` as a cell; a JSON document as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return value


def _csv_writer(stream: IO[str]) -> Callable[[Transaction], object]:
    """Writes the header now, and returns the function that writes one entry.

    A key of :meth:`Transaction.to_dict` missing from ``ENTRY_COLUMNS`` is an error, never a
    column silently left out.
    """
    writer = csv.DictWriter(stream, ENTRY_COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    return lambda entry: writer.writerow(
        {column: _csv_value(value) for column, value in entry.to_dict().items()}
    )


def _jsonl_writer(stream: IO[str]) -> Callable[[Transaction], object]:
    return lambda entry: stream.write(json.dumps(entry.to_dict(), default=json_value) + "\n")
