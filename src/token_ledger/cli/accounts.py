"""One user's account: ``account create|show|set-...``, ``status``, and the moves of tokens.

``deduct`` spends, ``grant`` adds tokens that do not reset, ``refund`` gives back a deduction:
each is one library call on one account, printed as the account's fields or one line of text.
Here too is how an account and its status are shown, as the seed's JSON (``monthlyUsed``...)
and as the library names the fields; in a table, each window cap is a row of its own
(``hour_window``, ``day_window``, ``week_window``, ``-`` for a unit without a cap).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import click

from token_ledger import TokenStatus
from token_ledger.account import TokenAccount
from token_ledger.application import TokenLedger
from token_ledger.cli import values
from token_ledger.cli.output import (
    RECORD_FORMAT,
    cell,
    echo_json,
    echo_table,
    fmt_option,
    json_option,
    plural,
)
from token_ledger.cli.root import cli, open_ledger
from token_ledger.errors import InsufficientTokens
from token_ledger.results import WindowStatus
from token_ledger.thresholds import Threshold
from token_ledger.windows import WINDOW_UNITS, SpendingWindow


def _status_fields(current: TokenStatus) -> dict[str, object]:
    """Every field of :class:`TokenStatus`, named as the library names it."""
    return {field.name: getattr(current, field.name) for field in attrs.fields(TokenStatus)}


def _camel_case(name: str) -> str:
    first, *others = name.split("_")
    return first + "".join(word.capitalize() for word in others)


def _camel_cased(fields: Mapping[str, object]) -> dict[str, object]:
    return {_camel_case(name): value for name, value in fields.items()}


def _status_json(current: TokenStatus) -> dict[str, object]:
    """The seed's status JSON (``monthlyUsed``...), then every other field, camel-cased alike;
    ``windows`` a list of objects named alike (``resetsAt``)."""
    fields = _camel_cased(_status_fields(current))
    fields["windows"] = [_camel_cased(attrs.asdict(window)) for window in current.windows]
    return {**current.to_dict(), **fields}


def _window_rows(shown: Mapping[str, str]) -> list[tuple[str, object]]:
    """A row for each unit, whether capped or not (``-``), so a table always has the same
    rows: ``day_window  200 of 300 used, ...``."""
    return [(f"{unit}_window", shown.get(unit)) for unit in WINDOW_UNITS]


def _window_status(window: WindowStatus) -> str:
    return (
        f"{window.used} of {window.cap} used, {window.remaining} remaining,"
        f" until {cell(window.resets_at)}"
    )


def _status_rows(current: TokenStatus) -> list[tuple[str, object]]:
    """The rows of the status table: its fields, the windows one row each."""
    rows: list[tuple[str, object]] = []
    for name, value in _status_fields(current).items():
        if name == "windows":
            rows += _window_rows({w.unit: _window_status(w) for w in current.windows})
        else:
            rows.append((name, value))
    return rows


def _account_fields(ledger: TokenLedger, account: TokenAccount) -> dict[str, object]:
    """The stored ``user_tokens`` row; ``reset_pending`` when the next write will reset it.

    ``windows`` are the stored ``spending_windows``: each window's cap, and what was used
    in the window from ``start`` (``null`` before anything was spent), which stands for 0
    once that window has ended, as ``monthly_tokens_used`` does for an ended period.
    """
    return {
        "user_id": account.user_id,
        "monthly_limit": account.monthly_limit,
        "monthly_tokens_used": account.monthly_tokens_used,
        "last_monthly_reset": account.last_monthly_reset,
        "reset_anchor": account.reset_anchor,
        "created_at": account.created_at,
        "updated_at": account.updated_at,
        "overage_limit": account.overage_limit,
        "grant_balance": account.grant_balance,
        "reserved_tokens": account.reserved_tokens,
        "time_zone": account.time_zone,
        "rollover_cap": account.rollover_cap,
        "thresholds": None if account.thresholds is None else [t.key for t in account.thresholds],
        "organisation_id": account.organisation_id,
        "windows": [attrs.asdict(window) for window in account.windows],
        "reset_pending": account.is_stale(ledger.policy, ledger.now()),
    }


def _stored_window(window: SpendingWindow) -> str:
    used = f"{window.used} of {window.cap} used"
    return used if window.start is None else f"{used} since {cell(window.start)}"


def _echo_account(ledger: TokenLedger, account: TokenAccount, as_json: bool, fmt: str) -> None:
    """The account as ``--json`` or as a record, its windows one row each."""
    fields = _account_fields(ledger, account)
    if as_json:
        echo_json(fields)
        return
    rows: list[tuple[str, object]] = []
    for name, value in fields.items():
        if name == "windows":
            rows += _window_rows({w.unit: _stored_window(w) for w in account.windows})
        else:
            rows.append((name, value))
    echo_table(rows, fmt=fmt)


# the account


@cli.group()
def account() -> None:
    """Open, show and change one user's account."""


@account.command("create")
@click.argument("user")
@click.option("--limit", "monthly_limit", type=int, required=True, help="Tokens per period.")
@click.option(
    "--reset-anchor",
    callback=values.instant,
    metavar="INSTANT",
    help="Reset on this instant's day of the month (an anniversary) instead of the 1st.",
)
@click.option(
    "--time-zone",
    metavar="ZONE",
    help="The account's own IANA zone for its months (default: the ledger's --timezone).",
)
@click.option(
    "--rollover-cap",
    type=int,
    help="Unspent allowance, up to this many tokens, carries into the next period.",
)
@click.option(
    "--organisation",
    "organisation_id",
    metavar="ORG",
    help="Make USER a member of the account ORG: it spends from ORG's budget too.",
)
@click.option(
    "--window-cap",
    "window_caps",
    multiple=True,
    callback=values.window_caps,
    metavar="UNIT=CAP",
    help="At most CAP tokens per hour, day or week (in the account's zone); repeatable.",
)
@click.option(
    "--exist-ok", is_flag=True, help="Show an existing account, as stored, instead of refusing."
)
@json_option
@fmt_option(RECORD_FORMAT)
def account_create(
    user: str,
    monthly_limit: int,
    reset_anchor: datetime | None,
    time_zone: str | None,
    rollover_cap: int | None,
    organisation_id: str | None,
    window_caps: dict[str, int],
    exist_ok: bool,
    as_json: bool,
    fmt: str,
) -> None:
    """Open USER's account with a limit of tokens per period."""
    ledger = open_ledger()
    open_account = ledger.ensure_account if exist_ok else ledger.open_account
    opened = open_account(
        user,
        monthly_limit,
        reset_anchor=reset_anchor,
        time_zone=time_zone,
        rollover_cap=rollover_cap,
        organisation_id=organisation_id,
        window_caps=window_caps or None,
    )
    _echo_account(ledger, opened, as_json, fmt)


@account.command("show")
@click.argument("user")
@json_option
@fmt_option(RECORD_FORMAT)
def account_show(user: str, as_json: bool, fmt: str) -> None:
    """USER's stored row; compare with `status`, which applies a pending reset."""
    ledger = open_ledger()
    _echo_account(ledger, ledger.get_account(user), as_json, fmt)


@account.command("set-limit")
@click.argument("user")
@click.argument("limit", type=int, required=False)
@click.option("--overage", type=int, help="Tokens a deduction may go past the limit.")
@click.option("--rollover-cap", type=int, help="Unspent tokens that carry into the next period.")
@json_option
@fmt_option(RECORD_FORMAT)
def account_set_limit(
    user: str,
    limit: int | None,
    overage: int | None,
    rollover_cap: int | None,
    as_json: bool,
    fmt: str,
) -> None:
    """Change USER's limit (and/or overage limit, rollover cap) now, keeping this period's
    usage."""
    ledger = open_ledger()
    updated = ledger.set_limit(user, limit, overage_limit=overage, rollover_cap=rollover_cap)
    _echo_account(ledger, updated, as_json, fmt)


@account.command("set-time-zone")
@click.argument("user")
@click.argument("zone", required=False)
@json_option
@fmt_option(RECORD_FORMAT)
def account_set_time_zone(user: str, zone: str | None, as_json: bool, fmt: str) -> None:
    """Count USER's months in ZONE (an IANA name) from now on; without ZONE, the ledger's.

    This period keeps its usage and ends at ZONE's next month boundary."""
    ledger = open_ledger()
    updated = ledger.set_time_zone(user, zone)
    _echo_account(ledger, updated, as_json, fmt)


@account.command("set-thresholds")
@click.argument("user")
@click.argument("thresholds", nargs=-1)
@click.option("--none", "no_thresholds", is_flag=True, help="No notifications for USER at all.")
@json_option
@fmt_option(RECORD_FORMAT)
def account_set_thresholds(
    user: str, thresholds: tuple[str, ...], no_thresholds: bool, as_json: bool, fmt: str
) -> None:
    """Give USER notification thresholds of its own (80% 100% nothing_left), in place of
    the ledger's defaults."""
    if bool(thresholds) == no_thresholds:
        raise click.UsageError("give the thresholds (such as 80% nothing_left) or --none")
    ledger = open_ledger()
    updated = ledger.set_thresholds(user, [Threshold.parse(key) for key in thresholds])
    _echo_account(ledger, updated, as_json, fmt)


@account.command("clear-thresholds")
@click.argument("user")
@json_option
@fmt_option(RECORD_FORMAT)
def account_clear_thresholds(user: str, as_json: bool, fmt: str) -> None:
    """Give USER the ledger's default thresholds again (--thresholds)."""
    ledger = open_ledger()
    _echo_account(ledger, ledger.set_thresholds(user, None), as_json, fmt)


@account.command("move")
@click.argument("user")
@click.argument("organisation", metavar="ORG")
@json_option
@fmt_option(RECORD_FORMAT)
def account_move(user: str, organisation: str, as_json: bool, fmt: str) -> None:
    """Make USER a member of the account ORG from now on: it spends from ORG's budget too.

    What USER spent before stays spent, and is refunded, where it was. Refused while
    USER holds reservations, or when ORG is one of USER's own members."""
    ledger = open_ledger()
    _echo_account(ledger, ledger.move_to_organisation(user, organisation), as_json, fmt)


@account.command("leave-organisation")
@click.argument("user")
@json_option
@fmt_option(RECORD_FORMAT)
def account_leave_organisation(user: str, as_json: bool, fmt: str) -> None:
    """Make USER a member of no organisation from now on: it spends from its own budget only.

    Refused while USER holds reservations."""
    ledger = open_ledger()
    _echo_account(ledger, ledger.move_to_organisation(user, None), as_json, fmt)


@account.command("set-window-caps")
@click.argument("user")
@click.argument("caps", nargs=-1, required=True, callback=values.window_caps, metavar="UNIT=CAP...")
@json_option
@fmt_option(RECORD_FORMAT)
def account_set_window_caps(user: str, caps: dict[str, int], as_json: bool, fmt: str) -> None:
    """Cap what USER may spend per hour, day and/or week (day=1000 hour=200), in its own
    zone; a unit not given is no longer capped.

    A window that stays keeps what it has used."""
    ledger = open_ledger()
    _echo_account(ledger, ledger.set_window_caps(user, caps), as_json, fmt)


@account.command("clear-window-caps")
@click.argument("user")
@json_option
@fmt_option(RECORD_FORMAT)
def account_clear_window_caps(user: str, as_json: bool, fmt: str) -> None:
    """Take away USER's hour, day and week caps: its period's allowance is its only cap."""
    ledger = open_ledger()
    _echo_account(ledger, ledger.set_window_caps(user, None), as_json, fmt)


# spending and giving


@cli.command()
@click.argument("user")
@json_option
@fmt_option(RECORD_FORMAT)
def status(user: str, as_json: bool, fmt: str) -> None:
    """What USER may still spend this period; --json leads with the seed's status JSON."""
    current = open_ledger().status(user)
    if as_json:
        echo_json(_status_json(current))
    else:
        echo_table(_status_rows(current), fmt=fmt)


@cli.command()
@click.argument("user")
@click.argument("amount", type=int)
@click.option(
    "--expires-at",
    callback=values.instant,
    metavar="INSTANT",
    help="When the grant stops counting.",
)
@click.option("--reason", help="Why the tokens were granted (a purchase, a promotion).")
@click.option("--idempotency-key", help="A retry with the same key changes nothing.")
@click.option("--priority", type=int, default=0, show_default=True, help="Lower is spent first.")
@json_option
def grant(
    user: str,
    amount: int,
    expires_at: datetime | None,
    reason: str | None,
    idempotency_key: str | None,
    priority: int,
    as_json: bool,
) -> None:
    """Give USER AMOUNT tokens that do not reset monthly."""
    entry = open_ledger().grant(
        user,
        amount,
        expires_at=expires_at,
        reason=reason,
        idempotency_key=idempotency_key,
        priority=priority,
    )
    if as_json:
        echo_json(entry.to_dict())
    else:
        click.echo(f"Granted {plural(amount, 'token')} to {user!r} (grant {entry.reference}).")


@cli.command("void-grant")
@click.argument("grant_id")
@click.option("--reason", help="Why the grant is taken back (a charge-back, a mistake).")
@click.option("--idempotency-key", help="A retry with the same key changes nothing.")
@json_option
def void_grant(
    grant_id: str, reason: str | None, idempotency_key: str | None, as_json: bool
) -> None:
    """Take back what is left of GRANT_ID, for good."""
    entry = open_ledger().void_grant(grant_id, reason=reason, idempotency_key=idempotency_key)
    if as_json:
        echo_json(entry.to_dict())
    else:
        click.echo(
            f"Voided grant {grant_id} of {entry.user_id!r}:"
            f" {plural(entry.amount, 'token')} taken back."
        )


@cli.command()
@click.argument("transaction_id", type=int)
@click.argument("amount", type=int, required=False)
@click.option("--reason", help="Why the tokens are given back.")
@click.option("--idempotency-key", help="A retry with the same key changes nothing.")
@json_option
def refund(
    transaction_id: int,
    amount: int | None,
    reason: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Give back AMOUNT (default: all that is left) of the deduction TRANSACTION_ID."""
    entry = open_ledger().refund(
        transaction_id, amount, reason=reason, idempotency_key=idempotency_key
    )
    if as_json:
        echo_json(entry.to_dict())
    else:
        click.echo(
            f"Refunded {plural(entry.amount, 'token')} of #{transaction_id}"
            f" to {entry.user_id!r} (entry #{entry.id})."
        )


@cli.command()
@click.argument("user")
@click.argument("amount", type=int)
@click.option("--feature", help="What the tokens were spent on.")
@click.option(
    "--context",
    callback=values.json_object,
    metavar="JSON",
    help="A JSON object stored with the entry.",
)
@click.option("--idempotency-key", help="A retry with the same key changes nothing.")
@json_option
def deduct(
    user: str,
    amount: int,
    feature: str | None,
    context: dict[str, Any] | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Spend AMOUNT of USER's tokens; too few left exits 1 and is recorded as failed."""
    ledger = open_ledger()
    try:
        result = ledger.deduct(
            user, amount, feature=feature, context=context, idempotency_key=idempotency_key
        )
    except InsufficientTokens as refused:
        if as_json:
            echo_json({"success": False, "monthlyRemaining": refused.remaining})
        raise
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(
            f"Deducted {plural(amount, 'token')} from {user!r}:"
            f" {result.monthly_remaining} remaining."
        )
