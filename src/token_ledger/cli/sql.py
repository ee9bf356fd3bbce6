"""``token-ledger sql``: prints the optional SQL with which the database applies the reset rules.

The scripts themselves live in :mod:`token_ledger.sql`; these commands only choose the schema
and time zone, and refuse a SQLite script whose months would not match the ledger's.
"""

from __future__ import annotations

import click

from token_ledger.cli.root import Refused, Settings, cli
from token_ledger.sql import postgres_script, sqlite_script


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
    settings: Settings = click.get_current_context().find_root().obj
    click.echo(postgres_script(schema, zone or settings.timezone, settings.thresholds), nl=False)


@sql_group.command("sqlite")
def sql_sqlite() -> None:
    """Print the SQLite SQL: the seed's view and triggers, for calendar months in UTC.

    Install it with any SQLite client:

    \b
    token-ledger sql sqlite | sqlite3 tokens.db
    """
    settings: Settings = click.get_current_context().find_root().obj
    if settings.timezone != "UTC":
        raise Refused(
            f"the SQLite SQL counts calendar months in UTC only, and the ledger's --timezone"
            f" is {settings.timezone}: leave resets to the library"
        )
    click.echo(sqlite_script(), nl=False)
