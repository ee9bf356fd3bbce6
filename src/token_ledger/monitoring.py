"""The operator's checklist of the seed guide, as values: health and alerts."""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen
class Health:
    """The guide's query 1: how many accounts are in the current period, how many stale.

    A stale account has a reset pending that no write has persisted yet. Users
    never see it (reads apply the reset); operators see it here.
    """

    total_users: int
    current: int
    stale: int
    checked_at: datetime

    @property
    def ok(self) -> bool:
        return self.stale == 0

    def to_dict(self) -> dict[str, int]:
        return {"total_users": self.total_users, "current": self.current, "stale": self.stale}


@attrs.frozen
class Alert:
    """One monitoring figure and the threshold that makes it worth waking someone."""

    name: str
    value: int
    threshold: int | None
    description: str

    @property
    def triggered(self) -> bool:
        """``value > threshold``, as the guide puts it; no threshold never triggers."""
        return self.threshold is not None and self.value > self.threshold

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "triggered": self.triggered,
            "description": self.description,
        }


@attrs.frozen
class AlertReport:
    """The guide's three monitoring alerts, computed at one instant."""

    stale_resets: Alert
    failed_transactions: Alert
    high_usage: Alert
    checked_at: datetime

    @property
    def alerts(self) -> tuple[Alert, Alert, Alert]:
        return (self.stale_resets, self.failed_transactions, self.high_usage)

    @property
    def triggered(self) -> list[Alert]:
        return [alert for alert in self.alerts if alert.triggered]

    def to_dict(self) -> dict[str, object]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "triggered": [alert.name for alert in self.triggered],
            "alerts": [alert.to_dict() for alert in self.alerts],
        }
