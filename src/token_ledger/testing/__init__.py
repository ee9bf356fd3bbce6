"""Helpers for testing code that uses token-ledger; no test framework is imported here."""

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

    def set(self, instant: datetime) -> datetime:
        """Jump to ``instant``, forwards or backwards."""
        with self._lock:
            self._now = _validation.instant(instant, "instant")
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = self._now + delta
            return self._now
