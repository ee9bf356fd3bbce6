"""Where "now" comes from. The domain takes instants as arguments and never reads a clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The wall clock in UTC: the default for :class:`~token_ledger.TokenLedger`."""
    return datetime.now(timezone.utc)  # noqa: TID251 - the one place that reads the wall clock
