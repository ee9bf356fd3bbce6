"""Helpers for testing code that uses token-ledger; no test framework is imported here.

- :class:`MovableClock`: a clock that stands still until a test moves it.
- :mod:`token_ledger.testing.operations`: accounts, operations and scenarios as values.
- :mod:`token_ledger.testing.strategies`: hypothesis strategies that generate them
  (the only module here that needs hypothesis).
- :mod:`token_ledger.testing.contract`: the adapter contract suite, for the authors of
  storage adapters (the only module here that needs pytest).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from token_ledger import _validation


class MovableClock:
    """A clock that stands still until moved: pass it as ``TokenLedger(..., clock=clock)``.

    >>> from datetime import datetime, timedelta, timezone
    >>> clock = MovableClock(datetime(2026, 1, 31, tzinfo=timezone.utc))
    >>> clock.advance(timedelta(days=1)).isoformat()
    '2026-02-01T00:00:00+00:00'
    """

    def __init__(self, start: datetime) -> None:
        self._now = _validation.instant(start, "start")
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return self._now

    def __repr__(self) -> str:
        """Shows the instant, which is what matters in a failing example hypothesis prints."""
        return f"MovableClock({self._now!r})"

    def set(self, instant: datetime) -> datetime:
        """Jump to ``instant``, forwards or backwards."""
        with self._lock:
            self._now = _validation.instant(instant, "instant")
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = self._now + delta
            return self._now
