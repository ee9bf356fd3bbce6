"""Values typed on the command line: instants, durations, JSON objects, window caps, the
``--db`` target.

Each is an option callback (which every click since 8.2 runs alike) that turns the text into
the value the library takes, or refuses it with a ``click.BadParameter`` naming the option.
They are apart from the commands because several commands share them, and because the rules
they apply (a time zone is required, ``1h30m`` is a duration) are the command line's contract.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import click

from token_ledger.errors import InvalidInput
from token_ledger.thresholds import Threshold, check_thresholds
from token_ledger.windows import WINDOW_UNITS

DURATION_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def instant(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
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


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """A span written ``90s``, ``30m``, ``1h``, ``2d``, ``1w``, or combined as ``1h30m``."""
    if value is None:
        return None
    text = value.strip().lower()
    if not re.fullmatch(r"(\d+[wdhms])+", text):
        raise click.BadParameter(f"{value!r} is not a duration such as 30m, 1h, 1d or 1h30m")
    parts = re.findall(r"(\d+)([wdhms])", text)
    return sum((timedelta(**{DURATION_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())


def json_object(
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


def window_caps(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> dict[str, int]:
    """Caps written ``UNIT=CAP`` (``day=1000 hour=200``), each unit once.

    What does not parse is refused here, as a mistyped integer is; a cap that parses is
    the library's to check (``day=0`` is refused as ``--limit 0`` is).
    """
    caps: dict[str, int] = {}
    for text in value:
        unit, equals, cap = text.partition("=")
        unit = unit.strip()
        if not equals or unit not in WINDOW_UNITS:
            raise click.BadParameter(
                f"{text!r} is not UNIT=CAP with UNIT one of {', '.join(WINDOW_UNITS)},"
                " such as day=1000"
            )
        try:
            tokens = int(cap)
        except ValueError:
            raise click.BadParameter(f"{text!r}: {cap!r} is not a whole number of tokens") from None
        if unit in caps:
            raise click.BadParameter(f"{unit} is given twice ({text!r})")
        caps[unit] = tokens
    return caps


def database(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuses ``--db ""`` (an unset shell variable): SQLite would open a throwaway database."""
    if not value.strip():
        raise click.BadParameter("is empty: give a SQLite file or a postgresql:// URL")
    return value


def thresholds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[Threshold, ...]:
    """Thresholds written ``80%,100%,nothing_left``; empty for none."""
    try:
        return check_thresholds([Threshold.parse(key) for key in value.split(",") if key.strip()])
    except InvalidInput as error:
        raise click.BadParameter(str(error)) from None
