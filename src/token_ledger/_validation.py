"""Checks shared by the domain values and the service layer.

They run before any storage is touched, so refused input never writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from token_ledger.errors import InvalidAmount, InvalidInput, NaiveDatetime

INT64_MAX = 2**63 - 1
MAX_IDENTIFIER_LENGTH = 255
MAX_SCHEMA_NAME_BYTES = 63
# ``json.dumps`` with any option builds a new encoder per call; every deduction checks a context.
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def positive_int(value: object, name: str = "amount") -> int:
    """Return ``value`` if it is an ``int`` in ``1 .. 2**63 - 1``.

    ``bool`` is refused although it is an ``int``: ``deduct(user, True)`` is a bug.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        shown = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
        raise InvalidAmount(f"{name} must be a whole number (int), got {shown}")
    if not 0 < value <= INT64_MAX:
        raise InvalidAmount(f"{name} must be between 1 and {INT64_MAX}, got {value}")
    return value


def non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(f"{name} must be a whole number (int), got {value!r}")
    if not 0 <= value <= INT64_MAX:
        raise InvalidAmount(f"{name} must be between 0 and {INT64_MAX}, got {value}")
    return value


def identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidInput(f"{name} must be at most {MAX_IDENTIFIER_LENGTH} characters")
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    return value


def schema_name(value: object) -> str:
    """A PostgreSQL schema: longer names are cut to 63 bytes, and then it would not find its own."""
    name = identifier(value, "schema")
    if len(name.encode()) > MAX_SCHEMA_NAME_BYTES:
        raise InvalidInput(f"schema must be at most {MAX_SCHEMA_NAME_BYTES} bytes long")
    return name


def optional_identifier(value: object, name: str) -> str | None:
    return None if value is None else identifier(value, name)


def instant(value: object, name: str) -> datetime:
    """Return ``value`` converted to UTC; naive datetimes are ambiguous and refused."""
    if not isinstance(value, datetime):
        raise InvalidInput(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetime(
            f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc)), got {value!r}"
        )
    return value.astimezone(timezone.utc)


def json_context(value: object) -> dict[str, Any]:
    """Return a JSON round-tripped copy, so every adapter hands back the same value.

    Tuples become lists and keys must be strings; NaN and infinities are refused
    because PostgreSQL's ``jsonb`` cannot hold them.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"context must be a mapping (a JSON object), got {value!r}")
    if any(not isinstance(key, str) for key in value):
        raise InvalidInput("context keys must be strings")
    try:
        text = _STRICT_JSON.encode(value)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"context must be JSON-serialisable: {error}") from error
    if "\\u0000" in text:
        raise InvalidInput("context must not contain NUL characters")
    decoded: dict[str, Any] = json.loads(text)
    return decoded
