"""Threshold notifications: ``notifications`` lists them, oldest first, from an id on.

A notification is recorded with the write that crossed a threshold; its id grows in the order
they commit, so ``--after`` the last id seen never skips one. ``--consumer`` starts after where
that consumer of the ledger acknowledged up to, as the library's durable cursors do.
"""

from __future__ import annotations

import click

from token_ledger.cli.output import TABLE_FORMAT, echo_json, echo_table, fmt_option, json_option
from token_ledger.cli.root import cli, open_ledger

NOTIFICATION_COLUMNS = (
    "id",
    "user_id",
    "threshold",
    "period_start",
    "occurrence",
    "created_at",
    "transaction_id",
    "monthly_used",
    "monthly_limit",
    "total_remaining",
)


@cli.command()
@click.option(
    "--after", type=int, default=None, metavar="ID", help="Only notifications after this id."
)
@click.option(
    "--consumer", help="Start after the id this consumer acknowledged (instead of --after)."
)
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@json_option
@fmt_option(TABLE_FORMAT)
def notifications(
    after: int | None, consumer: str | None, limit: int, as_json: bool, fmt: str
) -> None:
    """Thresholds crossed (80% used, nothing left...), oldest first."""
    if after is not None and consumer is not None:
        raise click.UsageError("--after and --consumer are refused together")
    ledger = open_ledger()
    start = ledger.notification_cursor(consumer) if consumer is not None else after or 0
    found = ledger.notifications(after=start, limit=limit)
    rows = [note.to_dict() for note in found]
    if as_json:
        echo_json(rows)
    elif rows:
        echo_table(
            [[row[c] for c in NOTIFICATION_COLUMNS] for row in rows], NOTIFICATION_COLUMNS, fmt
        )
    else:
        click.echo("No notifications.")
