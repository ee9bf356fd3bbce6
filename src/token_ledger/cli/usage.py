"""``usage``: tokens spent net of refunds, by user, feature, day or month.

Tokens count once, for the account that spent them; ``--organisation`` reports what one
organisation's budget paid instead, its members' spending among it.

One call of ``TokenLedger.usage``, printed as a table (``--fmt``), one line of JSON
(``--json``) or CSV with a header (``--csv``). Days and months are those of the ledger's
``--timezone``.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime

import click
from click.core import ParameterSource

from token_ledger.cli import values
from token_ledger.cli.output import TABLE_FORMAT, echo_json, echo_table, fmt_option, json_option
from token_ledger.cli.root import cli, open_ledger
from token_ledger.errors import InvalidInput
from token_ledger.repository import USAGE_GROUPS, UsageQuery


def _groups(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--by feature,day`` or ``--by feature --by day``, checked as the library checks it."""
    keys = tuple(key.strip() for text in value for key in text.split(",") if key.strip())
    try:
        return UsageQuery(by=keys).by
    except InvalidInput as error:
        raise click.BadParameter(str(error)) from None


@cli.command()
@click.option(
    "--since", callback=values.instant, metavar="INSTANT", help="Entries at or after this."
)
@click.option("--until", callback=values.instant, metavar="INSTANT", help="Entries before this.")
@click.option(
    "--by",
    multiple=True,
    callback=_groups,
    metavar="KEYS",
    help=f"Group by any of {', '.join(USAGE_GROUPS)} (day or month), comma-separated or repeated.",
)
@click.option("--user", "user_id", help="Only this user's usage.")
@click.option("--feature", help="Only this feature's usage.")
@click.option(
    "--organisation",
    metavar="ORG",
    help="What ORG's budget paid instead: its own spending and its shares of its members'.",
)
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row instead of text.")
@fmt_option(TABLE_FORMAT)
def usage(
    since: datetime | None,
    until: datetime | None,
    by: tuple[str, ...],
    user_id: str | None,
    feature: str | None,
    organisation: str | None,
    as_json: bool,
    as_csv: bool,
    fmt: str,
) -> None:
    """Tokens spent net of refunds, grouped --by user, feature and day or month."""
    ctx = click.get_current_context()
    if as_csv and (as_json or ctx.get_parameter_source("fmt") is ParameterSource.COMMANDLINE):
        raise click.UsageError("give one of --csv, --json and --fmt", ctx)
    report = open_ledger().usage(
        since=since,
        until=until,
        by=by,
        user_id=user_id,
        feature=feature,
        organisation=organisation,
    )
    rows = report.to_dicts()
    if as_json:
        echo_json(rows)
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, report.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    else:
        echo_table([list(row.values()) for row in rows], report.columns, fmt)
