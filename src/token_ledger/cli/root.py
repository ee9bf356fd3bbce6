"""The root group ``token-ledger``, and what every command needs from it.

Here are its options (``--db``, ``--timezone``), the :class:`Settings` they leave on the
context, :func:`open_ledger`, and the one place where errors become one line and an exit
status. The command modules import :data:`cli` from here to register on it; this module imports
none of them, so there is no cycle (:mod:`token_ledger.cli` imports them all).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import click
from click.exceptions import NoArgsIsHelpError

from token_ledger import __version__
from token_ledger.application import TokenLedger
from token_ledger.cli import values
from token_ledger.database_url import DatabaseNotFound, parse_database_url
from token_ledger.errors import TokenLedgerError
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.thresholds import Threshold

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_ALERT = 3

DEFAULT_DATABASE = "tokens.db"


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


# the ledger


@attrs.frozen
class Settings:
    """The root group's options, as every command finds them: ``ctx.find_root().obj``."""

    database: str
    timezone: str
    thresholds: tuple[Threshold, ...] = ()


def open_ledger(*, create: bool = False) -> TokenLedger:
    """The ledger named by ``--db`` (see :mod:`token_ledger.database_url`), closed at the end.

    Only ``init`` creates a SQLite file: anywhere else a mistyped path would
    open a new, empty ledger, which ``health`` and ``alerts`` would call healthy.
    An in-memory ledger is refused: it would be gone before the next command.
    """
    ctx = click.get_current_context()
    settings: Settings = ctx.find_root().obj
    policy = MonthlyResetPolicy(timezone=settings.timezone)
    database = settings.database
    if parse_database_url(database).in_memory:
        raise Refused(
            f"{database!r} is an in-memory ledger, which keeps nothing between commands:"
            " give a SQLite file or a postgresql:// URL"
        )
    try:
        ledger = TokenLedger.open(
            database, create=create, policy=policy, thresholds=settings.thresholds
        )
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
    callback=values.database,
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
@click.option(
    "--thresholds",
    envvar="TOKEN_LEDGER_THRESHOLDS",
    default="",
    callback=values.thresholds,
    show_envvar=True,
    metavar="LIST",
    help="The ledger's default notification thresholds, such as 80%,100%,nothing_left.",
)
@click.version_option(__version__, prog_name="token-ledger")
@click.pass_context
def cli(
    ctx: click.Context, database: str, timezone: str, thresholds: tuple[Threshold, ...]
) -> None:
    """Monthly token allowances: accounts, deductions, resets and the operator's checklist.

    Exit status: 0 done, 1 refused or failed, 2 wrong command line,
    3 `alerts` found a threshold crossed.
    """
    ctx.obj = Settings(database, timezone, thresholds)


def main() -> None:
    """The ``token-ledger`` console script, and ``python -m token_ledger``."""
    cli()
