"""Checks shared by the domain values and the service layer.

They run before any storage is touched, so refused input never writes, and
they are the same for every engine: a value one engine would store and
another would choke on (a lone surrogate, a jsonb-hostile context, an
instant past what ``datetime`` can convert) is refused here, for all of them.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from token_ledger.errors import InvalidAmount, InvalidInput, NaiveDatetime

INT64_MAX = 2**63 - 1
MAX_IDENTIFIER_LENGTH = 255
MAX_TEXT_LENGTH = 1000
MAX_SCHEMA_NAME_BYTES = 63
MAX_CONTEXT_DEPTH = 32
"""Levels of nesting in a context: ``{"a": {"b": 1}}`` has two."""
MAX_CONTEXT_ITEMS = 10_000
"""Keys, list items and scalars in a context, all levels counted."""
MAX_CONTEXT_TEXT = 65_536
"""Characters of keys and strings in a context, all levels counted."""
MAX_CONTEXT_INTEGER_DIGITS = 300
"""Far past any count or id, and short of Python's limit on converting integers to text."""
_CONTEXT_INTEGER_BOUND = 10**MAX_CONTEXT_INTEGER_DIGITS
_FLOATS_WRITTEN_AS_INTEGERS = 1e16
"""Python writes floats from here on with an exponent (``1e+16``); all of them are whole."""
EARLIEST_INSTANT = datetime(1800, 1, 1, tzinfo=timezone.utc)
LATEST_INSTANT = datetime(9000, 1, 1, tzinfo=timezone.utc)
"""Instants are accepted in ``[EARLIEST_INSTANT, LATEST_INSTANT)``: wide enough for any
ledger, and narrow enough that the end of a period of up to 100 years, or a hold's
expiry, computed from any of them stays a ``datetime`` in every time zone."""


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


PRIORITY_BOUND = 2**31
"""Grant priorities are 32-bit signed integers: an ``integer`` column on every engine."""


def priority(value: object) -> int:
    """A grant's priority: a whole number in ``-2**31 .. 2**31 - 1``, lower spent first."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(f"priority must be a whole number (int), got {value!r}")
    if not -PRIORITY_BOUND <= value < PRIORITY_BOUND:
        raise InvalidAmount(
            f"priority must be between {-PRIORITY_BOUND} and {PRIORITY_BOUND - 1}, got {value}"
        )
    return value


def optional_positive_int(value: object, name: str) -> int | None:
    return None if value is None else positive_int(value, name)


def optional_bool(value: object, name: str) -> bool | None:
    """``True``, ``False`` or ``None``: ``"yes"`` or ``1`` would mean something else per engine."""
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{name} must be True, False or None, got {value!r}")


def _utf8(value: str, name: str) -> str:
    """Text must encode as UTF-8: a lone surrogate cannot be stored by any database."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} must be valid Unicode text (it has a lone surrogate)") from None
    return value


def identifier(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidInput(f"{name} must be at most {MAX_IDENTIFIER_LENGTH} characters")
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    return _utf8(value, name)


def optional_identifier(value: object, name: str) -> str | None:
    return None if value is None else identifier(value, name)


def optional_text(value: object, name: str) -> str | None:
    """Free text such as a grant's ``reason``: may be empty, never NUL or a lone surrogate."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_LENGTH or "\x00" in value:
        raise InvalidInput(
            f"{name} must be a string of at most {MAX_TEXT_LENGTH} characters without NUL"
        )
    return _utf8(value, name)


def schema_name(value: object) -> str:
    """A PostgreSQL schema: longer names are cut to 63 bytes, and then it would not find its own."""
    name = identifier(value, "schema")
    if len(name.encode()) > MAX_SCHEMA_NAME_BYTES:
        raise InvalidInput(f"schema must be at most {MAX_SCHEMA_NAME_BYTES} bytes long")
    return name


def instant(value: object, name: str) -> datetime:
    """Return ``value`` converted to UTC; naive datetimes are ambiguous and refused."""
    if not isinstance(value, datetime):
        raise InvalidInput(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetime(
            f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc)), got {value!r}"
        )
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST_INSTANT <= utc < LATEST_INSTANT:
        raise InvalidInput(
            f"{name} must be from {EARLIEST_INSTANT.isoformat()} and before"
            f" {LATEST_INSTANT.isoformat()}, got {value.isoformat()}"
        )
    return utc


def optional_instant(value: object, name: str) -> datetime | None:
    return None if value is None else instant(value, name)


def instant_after(start: datetime, delay: object, name: str) -> datetime:
    """``start + delay`` for a positive ``timedelta``, inside the supported range."""
    if not isinstance(delay, timedelta) or delay <= timedelta(0):
        raise InvalidInput(f"{name} must be a positive timedelta, got {delay!r}")
    try:
        end = start + delay
    except OverflowError:
        end = LATEST_INSTANT
    if end >= LATEST_INSTANT:
        raise InvalidInput(f"{name} must end before {LATEST_INSTANT.isoformat()}, got {delay!r}")
    return end


def instant_before(end: datetime, window: object, name: str) -> datetime:
    """``end - window`` for a non-negative ``timedelta``, no earlier than the supported range.

    A window longer than the range means "since the beginning", not an error.
    """
    if not isinstance(window, timedelta) or window < timedelta(0):
        raise InvalidInput(f"{name} must be a non-negative timedelta, got {window!r}")
    if window >= end - EARLIEST_INSTANT:
        return EARLIEST_INSTANT
    return end - window


def json_context(value: object) -> dict[str, Any]:
    """Return a plain copy of a context that every engine stores and returns alike.

    A copy, so that later edits of the caller's dict change nothing stored.
    Tuples become lists, as JSON has them, and floats of 1e16 and more the
    whole numbers they are, as ``jsonb`` has them. Refused: keys that are not strings;
    NaN and infinities, NUL characters and lone surrogates (PostgreSQL's
    ``jsonb`` cannot hold them); values JSON has no type for; and contexts past
    :data:`MAX_CONTEXT_DEPTH`, :data:`MAX_CONTEXT_ITEMS` or :data:`MAX_CONTEXT_TEXT`,
    so a hostile client can neither exhaust the stack nor bloat the log.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"context must be a mapping (a JSON object), got {value!r}")
    budget = _ContextBudget()
    copied: dict[str, Any] = budget.copy(value, 1)
    return copied


class _ContextBudget:
    """Walks a context once, copying it and counting what it holds."""

    def __init__(self) -> None:
        self.items = 0
        self.text = 0

    def copy(self, value: object, depth: int) -> Any:
        self.items += 1
        if self.items > MAX_CONTEXT_ITEMS:
            raise InvalidInput(f"context must hold at most {MAX_CONTEXT_ITEMS} values")
        if isinstance(value, str):
            return self._text(value)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if not -_CONTEXT_INTEGER_BOUND < value < _CONTEXT_INTEGER_BOUND:
                raise InvalidInput(
                    f"context integers must have at most {MAX_CONTEXT_INTEGER_DIGITS} digits"
                )
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"context must not hold {value} (JSON has no such number)")
            if abs(value) >= _FLOATS_WRITTEN_AS_INTEGERS:
                # PostgreSQL's jsonb gives 1e+20 back as 100000000000000000000, exactly
                # the number its text names: every engine returns that integer.
                return int(decimal.Decimal(repr(value)))
            return value + 0.0  # -0.0 comes back from jsonb as 0.0
        if depth > MAX_CONTEXT_DEPTH:
            raise InvalidInput(f"context must be nested at most {MAX_CONTEXT_DEPTH} levels deep")
        if isinstance(value, Mapping):
            copied = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"context keys must be strings, got {key!r}")
                self.items += 1
                copied[self._text(key)] = self.copy(item, depth + 1)
            return copied
        if isinstance(value, list | tuple):
            return [self.copy(item, depth + 1) for item in value]
        raise InvalidInput(
            f"context must be JSON-serialisable: {type(value).__name__} values are not"
        )

    def _text(self, value: str) -> str:
        self.text += len(value)
        if self.text > MAX_CONTEXT_TEXT:
            raise InvalidInput(f"context must hold at most {MAX_CONTEXT_TEXT} characters of text")
        if "\x00" in value:
            raise InvalidInput("context must not contain NUL characters")
        return _utf8(value, "context")
