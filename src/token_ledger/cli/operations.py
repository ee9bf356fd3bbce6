"""The operator's commands, on the whole ledger rather than one account.

``init`` creates the tables; ``reset --all`` is the monthly job; ``reconcile``, ``health`` and
``alerts`` are the checklist a cron job or a monitor runs, and exit 3 when something needs a
person, so that the exit status alone can page someone.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from token_ledger.application import DEFAULT_RESET_BATCH_SIZE, TokenLedger
from token_ledger.cli import values
from token_ledger.cli.output import (
    RECORD_FORMAT,
    TABLE_FORMAT,
    echo_json,
    echo_table,
    fmt_option,
    json_option,
    plural,
)
from token_ledger.cli.root import EXIT_ALERT, cli, open_ledger


@cli.command()
def init() -> None:
    """Create the ledger's tables, or bring them up to date; safe to run again."""
    open_ledger(create=True)
    click.echo("Ledger ready.")


# resets


@cli.command()
@click.argument("user", required=False)
@click.option("--all", "every", is_flag=True, help="Reset every account whose period ended.")
@click.option(
    "--batch-size",
    type=int,
    help=f"Accounts per transaction with --all [default: {DEFAULT_RESET_BATCH_SIZE}].",
)
@json_option
def reset(user: str | None, every: bool, batch_size: int | None, as_json: bool) -> None:
    """Persist USER's pending reset, or with --all every pending reset (the monthly job)."""
    ctx = click.get_current_context()
    if every == (user is not None):
        raise click.UsageError("give either USER or --all", ctx)
    if batch_size is not None and not every:
        raise click.UsageError("--batch-size goes with --all", ctx)
    ledger = open_ledger()
    if user is not None:
        was_reset = ledger.reset_if_needed(user)
        if as_json:
            echo_json({"user_id": user, "reset": was_reset})
        else:
            click.echo(f"Reset {user!r}." if was_reset else f"{user!r} needed no reset.")
        return
    count = _reset_all(ledger, DEFAULT_RESET_BATCH_SIZE if batch_size is None else batch_size)
    if as_json:
        echo_json({"reset_count": count})
    else:
        click.echo(f"Reset {plural(count, 'account')}.")


def _reset_all(ledger: TokenLedger, batch_size: int) -> int:
    """``reset_all_stale``, with a progress bar on stderr when it takes more than one batch."""
    stale = ledger.health().stale
    if stale <= batch_size:
        return ledger.reset_all_stale(batch_size=batch_size)
    with click.progressbar(length=stale, label="Resetting", file=sys.stderr) as bar:
        return ledger.reset_all_stale(
            batch_size=batch_size, progress=lambda done: bar.update(done - bar.pos)
        )


# the operator's checklist


@cli.command()
@click.option("--user", help="Check only this user's account.")
@json_option
@fmt_option(TABLE_FORMAT)
def reconcile(user: str | None, as_json: bool, fmt: str) -> None:
    """Recompute balances from the log; exits 3 when a stored balance differs."""
    found = open_ledger().reconcile(user)
    if as_json:
        echo_json([discrepancy.to_dict() for discrepancy in found])
    elif found:
        echo_table(
            [(d.user_id, d.field, d.stored, d.expected) for d in found],
            ("user_id", "field", "stored", "expected"),
            fmt,
        )
    else:
        click.echo("Every stored balance matches the log.")
    if found:
        click.get_current_context().exit(EXIT_ALERT)


@cli.command()
@json_option
@fmt_option(RECORD_FORMAT)
def health(as_json: bool, fmt: str) -> None:
    """Accounts in the current period and stale ones (a reset not yet written)."""
    report = open_ledger().health()
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table([*report.to_dict().items(), ("checked_at", report.checked_at)], fmt=fmt)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave, so that the library's defaults apply to the rest."""
    return {name: value for name, value in options.items() if value is not None}


@cli.command()
@click.option(
    "--stale-after",
    callback=values.duration,
    metavar="DURATION",
    help="Grace before a pending reset counts [default: 1d].",
)
@click.option(
    "--stale-threshold", type=int, help="Alert above this many stale accounts [default: 0]."
)
@click.option(
    "--failed-window",
    callback=values.duration,
    metavar="DURATION",
    help="How far back refusals count [default: 1h].",
)
@click.option("--failed-threshold", type=int, help="Alert above this many refusals [default: 10].")
@click.option(
    "--usage-ratio", type=float, help="Share of the limit that is high usage [default: 0.9]."
)
@click.option(
    "--high-usage-threshold",
    type=int,
    help="Alert above this many high-usage accounts [default: never].",
)
@json_option
@fmt_option(TABLE_FORMAT)
def alerts(as_json: bool, fmt: str, **thresholds: Any) -> None:
    """The guide's three monitoring alerts; exit status 3 when any is triggered."""
    report = open_ledger().alerts(**_given(thresholds))
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table(
            [(a.name, a.value, a.threshold, a.triggered, a.description) for a in report.alerts],
            ("alert", "value", "threshold", "triggered", "description"),
            fmt,
        )
    if report.triggered:
        click.get_current_context().exit(EXIT_ALERT)
