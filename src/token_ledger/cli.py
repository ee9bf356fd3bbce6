"""The ``token-ledger`` command line: a thin shell over :class:`~token_ledger.TokenLedger`.

Each command is one library call (or a loop of them) and some formatting, so
the command line and an application that imports token-ledger apply exactly
the same rules. Exit status: 0 done, 1 the ledger refused or failed, 2 the
command line is wrong, 3 ``alerts`` found a threshold crossed. Errors are one
line on stderr, never a traceback: cron mail and CI logs stay readable.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs
import click
from click.exceptions import NoArgsIsHelpError

from token_ledger import __version__
from token_ledger.account import TokenAccount
from token_ledger.database_url import DatabaseNotFound, parse_database_url
from token_ledger.errors import InsufficientTokens, TokenLedgerError
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.service import DEFAULT_RESET_BATCH_SIZE, TokenLedger
from token_ledger.sql import postgres_script, sqlite_script
from token_ledger.transactions import OperationType, Transaction

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_ALERT = 3

DEFAULT_DATABASE = "tokens.db"
HISTORY_PAGE_SIZE = 100
EXPORT_PAGE_SIZE = 1000
ENTRY_COLUMNS = (
    "id",
    "user_id",
    "operation_type",
    "amount",
    "feature",
    "operation_context",
    "success",
    "created_at",
    "idempotency_key",
    "balance_after",
)
DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}

Decorated = TypeVar("Decorated", bound=Callable[..., Any])


# errors


class Refused(click.ClickException):
    """The ledger refused the operation or failed: ``Error: ...`` on stderr, exit 1."""

    exit_code = EXIT_REFUSED


class BadUsage(click.ClickException):
    """The command line is wrong: one line instead of click's usage block, exit 2."""

    exit_code = EXIT_USAGE


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """The one place where library and usage errors become a line and an exit status."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `token-ledger` alone shows its help
    except click.UsageError as error:
        hint = "" if error.ctx is None else f" (see '{error.ctx.command_path} --help')"
        raise BadUsage(error.format_message() + hint) from error
    except TokenLedgerError as error:
        raise Refused(str(error)) from error
    except OSError as error:
        if error.errno == errno.EPIPE:
            raise  # click ends quietly when the reader of a pipe goes away
        raise Refused(str(error)) from error


class _Shell(click.Group):
    """The root group: parsing and every subcommand run inside :func:`_one_line_errors`."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)


# values on the command line: option callbacks, which every click since 8.2 runs alike


def _instant(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """ISO 8601 with a time zone; a naive time is refused, as the library refuses it."""
    if value is None:
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # fromisoformat reads "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 instant such as 2026-02-01T00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise click.BadParameter(
            f"{value!r} has no time zone: write 2026-02-01T00:00Z for UTC, or +01:00 for an offset"
        )
    return parsed


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """A span written ``90s``, ``30m``, ``1h``, ``2d``, ``1w``, or combined as ``1h30m``."""
    if value is None:
        return None
    text = value.strip().lower()
    if not re.fullmatch(r"(\d+[wdhms])+", text):
        raise click.BadParameter(f"{value!r} is not a duration such as 30m, 1h, 1d or 1h30m")
    parts = re.findall(r"(\d+)([wdhms])", text)
    return sum((timedelta(**{DURATION_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())


def _json_object(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    """A JSON object, like the seed's ``context`` field."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise click.BadParameter(f"not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"must be a JSON object such as '{{\"test\": true}}', got {value}")
    return parsed


def _database(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuses ``--db ""`` (an unset shell variable): SQLite would open a throwaway database."""
    if not value.strip():
        raise click.BadParameter("is empty: give a SQLite file or a postgresql:// URL")
    return value


# output


def _cell(value: object) -> str:
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


def _echo_table(rows: Sequence[Sequence[object]], headers: Sequence[str] = ()) -> None:
    """Aligned columns, numbers to the right; without ``headers``, rows of name and value."""
    lines = [[_cell(value) for value in row] for row in rows]
    if headers:
        lines.insert(0, list(headers))
    if not lines:
        return
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    numeric = [_is_numeric([row[i] for row in rows]) for i in range(len(widths))]
    if headers:
        lines.insert(1, ["-" * width for width in widths])
    for line in lines:
        cells = (
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(line, widths, numeric, strict=True)
        )
        click.echo("  ".join(cells).rstrip())


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, default=_json_value))


def _account_fields(ledger: TokenLedger, account: TokenAccount) -> dict[str, object]:
    """The stored ``user_tokens`` row; ``reset_pending`` when the next write will reset it."""
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
        "reset_pending": account.is_stale(ledger.policy, ledger.now()),
    }


def _entry_fields(entry: Transaction) -> dict[str, object]:
    """A ``token_transactions`` row, in its column order."""
    return {column: getattr(entry, column) for column in ENTRY_COLUMNS}


def _echo_record(fields: dict[str, object], as_json: bool) -> None:
    if as_json:
        _echo_json(fields)
    else:
        _echo_table(list(fields.items()))


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave, so that the library's defaults apply to the rest."""
    return {name: value for name, value in options.items() if value is not None}


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one line of JSON instead of text."
)


# the ledger


@attrs.frozen
class _Settings:
    database: str
    timezone: str


def _open_ledger(*, create: bool = False) -> TokenLedger:
    """The ledger named by ``--db`` (see :mod:`token_ledger.database_url`), closed at the end.

    Only ``init`` creates a SQLite file: anywhere else a mistyped path would
    open a new, empty ledger, which ``health`` and ``alerts`` would call healthy.
    An in-memory ledger is refused: it would be gone before the next command.
    """
    ctx = click.get_current_context()
    settings: _Settings = ctx.find_root().obj
    policy = MonthlyResetPolicy(timezone=settings.timezone)
    database = settings.database
    if parse_database_url(database).in_memory:
        raise Refused(
            f"{database!r} is an in-memory ledger, which keeps nothing between commands:"
            " give a SQLite file or a postgresql:// URL"
        )
    try:
        ledger = TokenLedger.open(database, create=create, policy=policy)
    except DatabaseNotFound as missing:
        raise Refused(
            f"no ledger at {database!r}: create it with 'token-ledger init', or choose another"
            " with --db or TOKEN_LEDGER_DATABASE_URL"
        ) from missing
    return ctx.with_resource(ledger)


@click.group(cls=_Shell, name="token-ledger")
@click.option(
    "--db",
    "database",
    envvar="TOKEN_LEDGER_DATABASE_URL",
    default=DEFAULT_DATABASE,
    callback=_database,
    show_default=True,
    show_envvar=True,
    help="The ledger: a SQLite file (or sqlite:///path), or a postgresql:// URL.",
)
@click.option(
    "--timezone",
    envvar="TOKEN_LEDGER_TIMEZONE",
    default="UTC",
    show_default=True,
    show_envvar=True,
    help="IANA time zone whose midnight of the 1st starts each month.",
)
@click.version_option(__version__, prog_name="token-ledger")
@click.pass_context
def cli(ctx: click.Context, database: str, timezone: str) -> None:
    """Monthly token allowances: accounts, deductions, resets and the operator's checklist.

    Exit status: 0 done, 1 refused or failed, 2 wrong command line,
    3 `alerts` found a threshold crossed.
    """
    ctx.obj = _Settings(database, timezone)


def main() -> None:
    """The ``token-ledger`` console script, and ``python -m token_ledger``."""
    cli()


@cli.command()
def init() -> None:
    """Create the ledger's tables, or bring them up to date; safe to run again."""
    _open_ledger(create=True)
    click.echo("Ledger ready.")


# accounts


@cli.group()
def account() -> None:
    """Open, show and change one user's account."""


@account.command("create")
@click.argument("user")
@click.option("--limit", "monthly_limit", type=int, required=True, help="Tokens per period.")
@click.option(
    "--reset-anchor",
    callback=_instant,
    metavar="INSTANT",
    help="Reset on this instant's day of the month (an anniversary) instead of the 1st.",
)
@click.option(
    "--exist-ok", is_flag=True, help="Show an existing account, as stored, instead of refusing."
)
@json_option
def account_create(
    user: str, monthly_limit: int, reset_anchor: datetime | None, exist_ok: bool, as_json: bool
) -> None:
    """Open USER's account with a limit of tokens per period."""
    ledger = _open_ledger()
    open_account = ledger.ensure_account if exist_ok else ledger.open_account
    opened = open_account(user, monthly_limit, reset_anchor=reset_anchor)
    _echo_record(_account_fields(ledger, opened), as_json)


@account.command("show")
@click.argument("user")
@json_option
def account_show(user: str, as_json: bool) -> None:
    """USER's stored row; compare with `status`, which applies a pending reset."""
    ledger = _open_ledger()
    _echo_record(_account_fields(ledger, ledger.get_account(user)), as_json)


@account.command("set-limit")
@click.argument("user")
@click.argument("limit", type=int, required=False)
@click.option("--overage", type=int, help="Tokens a deduction may go past the limit.")
@json_option
def account_set_limit(user: str, limit: int | None, overage: int | None, as_json: bool) -> None:
    """Change USER's limit (and/or overage limit) now, keeping this period's usage."""
    ledger = _open_ledger()
    updated = ledger.set_limit(user, limit, overage_limit=overage)
    _echo_record(_account_fields(ledger, updated), as_json)


# spending and resets


@cli.command()
@click.argument("user")
@json_option
def status(user: str, as_json: bool) -> None:
    """What USER may still spend this period; --json prints the seed's status JSON."""
    current = _open_ledger().status(user)
    if as_json:
        _echo_json(current.to_dict())
        return
    _echo_table(
        [
            ("user_id", current.user_id),
            ("monthly_used", current.monthly_used),
            ("monthly_limit", current.monthly_limit),
            ("monthly_remaining", current.monthly_remaining),
            ("period_start", current.period_start),
            ("next_reset", current.next_reset),
            ("grant_balance", current.grant_balance),
            ("reserved", current.reserved),
            ("overage_used", current.overage_used),
            ("total_remaining", current.total_remaining),
        ]
    )


@cli.command()
@click.argument("user")
@click.argument("amount", type=int)
@click.option(
    "--expires-at", callback=_instant, metavar="INSTANT", help="When the grant stops counting."
)
@click.option("--reason", help="Why the tokens were granted (a purchase, a promotion).")
@click.option("--idempotency-key", help="A retry with the same key changes nothing.")
@json_option
def grant(
    user: str,
    amount: int,
    expires_at: datetime | None,
    reason: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Give USER AMOUNT tokens that do not reset monthly."""
    entry = _open_ledger().grant(
        user, amount, expires_at=expires_at, reason=reason, idempotency_key=idempotency_key
    )
    if as_json:
        _echo_json(_entry_fields(entry))
    else:
        click.echo(f"Granted {_plural(amount, 'token')} to {user!r} (grant {entry.reference}).")


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
    entry = _open_ledger().refund(
        transaction_id, amount, reason=reason, idempotency_key=idempotency_key
    )
    if as_json:
        _echo_json(_entry_fields(entry))
    else:
        click.echo(
            f"Refunded {_plural(entry.amount, 'token')} of #{transaction_id}"
            f" to {entry.user_id!r} (entry #{entry.id})."
        )


@cli.command()
@click.argument("user")
@click.argument("amount", type=int)
@click.option("--feature", help="What the tokens were spent on.")
@click.option(
    "--context", callback=_json_object, metavar="JSON", help="A JSON object stored with the entry."
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
    ledger = _open_ledger()
    try:
        result = ledger.deduct(
            user, amount, feature=feature, context=context, idempotency_key=idempotency_key
        )
    except InsufficientTokens as refused:
        if as_json:
            _echo_json({"success": False, "monthlyRemaining": refused.remaining})
        raise
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(
            f"Deducted {_plural(amount, 'token')} from {user!r}:"
            f" {result.monthly_remaining} remaining."
        )


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
    ledger = _open_ledger()
    if user is not None:
        was_reset = ledger.reset_if_needed(user)
        if as_json:
            _echo_json({"user_id": user, "reset": was_reset})
        else:
            click.echo(f"Reset {user!r}." if was_reset else f"{user!r} needed no reset.")
        return
    count = _reset_all(ledger, DEFAULT_RESET_BATCH_SIZE if batch_size is None else batch_size)
    if as_json:
        _echo_json({"reset_count": count})
    else:
        click.echo(f"Reset {_plural(count, 'account')}.")


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
def reconcile(user: str | None, as_json: bool) -> None:
    """Recompute balances from the log; exits 3 when a stored balance differs."""
    found = _open_ledger().reconcile(user)
    if as_json:
        _echo_json([discrepancy.to_dict() for discrepancy in found])
    elif found:
        _echo_table(
            [(d.user_id, d.field, d.stored, d.expected) for d in found],
            ("user_id", "field", "stored", "expected"),
        )
    else:
        click.echo("Every stored balance matches the log.")
    if found:
        click.get_current_context().exit(EXIT_ALERT)


@cli.command()
@json_option
def health(as_json: bool) -> None:
    """Accounts in the current period and stale ones (a reset not yet written)."""
    report = _open_ledger().health()
    if as_json:
        _echo_json(report.to_dict())
    else:
        _echo_table([*report.to_dict().items(), ("checked_at", report.checked_at)])


@cli.command()
@click.option(
    "--stale-after",
    callback=_duration,
    metavar="DURATION",
    help="Grace before a pending reset counts [default: 1d].",
)
@click.option(
    "--stale-threshold", type=int, help="Alert above this many stale accounts [default: 0]."
)
@click.option(
    "--failed-window",
    callback=_duration,
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
def alerts(as_json: bool, **thresholds: Any) -> None:
    """The guide's three monitoring alerts; exit status 3 when any is triggered."""
    report = _open_ledger().alerts(**_given(thresholds))
    if as_json:
        _echo_json(report.to_dict())
    else:
        _echo_table(
            [(a.name, a.value, a.threshold, a.triggered, a.description) for a in report.alerts],
            headers=("alert", "value", "threshold", "triggered", "description"),
        )
    if report.triggered:
        click.get_current_context().exit(EXIT_ALERT)


# the log


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
            "--since", callback=_instant, metavar="INSTANT", help="Entries at or after this."
        ),
        click.option("--until", callback=_instant, metavar="INSTANT", help="Entries before this."),
    )
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@_entry_filters
@click.option("--limit", type=int, default=HISTORY_PAGE_SIZE, show_default=True, help="Page size.")
@click.option("--before-id", type=int, help="Entries older than this id: the next page.")
@json_option
def history(limit: int, before_id: int | None, as_json: bool, **filters: Any) -> None:
    """Ledger entries, newest first, a page at a time."""
    page = _open_ledger().history(**filters, limit=limit, before_id=before_id)
    if as_json:
        _echo_json([_entry_fields(entry) for entry in page])
        return
    columns = (
        *("id", "created_at", "user_id", "operation_type", "amount", "success"),
        *("balance_after", "feature", "operation_context"),
    )
    _echo_table([[getattr(entry, c) for c in columns] for entry in page], headers=columns)
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
    ledger = _open_ledger()
    count = 0
    with _replaced_when_complete(output) as stream:
        write = _csv_writer(stream) if output_format == "csv" else _jsonl_writer(stream)
        for entry in _every_entry(ledger, filters):
            write(entry)
            count += 1
    click.echo(f"Exported {_plural(count, 'entry', 'entries')}.", err=True)


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
    before_id: int | None = None
    while True:
        page = ledger.history(**filters, before_id=before_id, limit=EXPORT_PAGE_SIZE)
        yield from page
        if len(page) < EXPORT_PAGE_SIZE:
            return
        before_id = page[-1].id


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _csv_writer(stream: IO[str]) -> Callable[[Transaction], object]:
    """Writes the header now, and returns the function that writes one entry."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(ENTRY_COLUMNS)
    return lambda entry: writer.writerow(
        [_csv_value(value) for value in _entry_fields(entry).values()]
    )


def _jsonl_writer(stream: IO[str]) -> Callable[[Transaction], object]:
    return lambda entry: stream.write(json.dumps(_entry_fields(entry), default=_json_value) + "\n")


# the optional SQL


@cli.group("sql")
def sql_group() -> None:
    """Print the optional SQL with which the database applies the reset rules itself."""


@sql_group.command("postgres")
@click.option(
    "--schema", default="public", show_default=True, help="The schema of the ledger's tables."
)
@click.option(
    "--timezone",
    "zone",
    help="Months start at midnight of the 1st in this zone [default: token-ledger's --timezone].",
)
def sql_postgres(schema: str, zone: str | None) -> None:
    """Print the PostgreSQL SQL: the seed's view, triggers and functions, and deduct_tokens.

    Install it in one transaction:

    \b
    token-ledger sql postgres | psql --single-transaction URL
    """
    settings: _Settings = click.get_current_context().find_root().obj
    click.echo(postgres_script(schema, zone or settings.timezone), nl=False)


@sql_group.command("sqlite")
def sql_sqlite() -> None:
    """Print the SQLite SQL: the seed's view and triggers, for calendar months in UTC.

    Install it with any SQLite client:

    \b
    token-ledger sql sqlite | sqlite3 tokens.db
    """
    settings: _Settings = click.get_current_context().find_root().obj
    if settings.timezone != "UTC":
        raise Refused(
            f"the SQLite SQL counts calendar months in UTC only, and the ledger's --timezone"
            f" is {settings.timezone}: leave resets to the library"
        )
    click.echo(sqlite_script(), nl=False)
