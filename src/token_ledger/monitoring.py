"""The operator's checklist of the seed guide, as values: health and alerts.

Everything here is pure: :class:`~token_ledger.TokenLedger` counts accounts
and entries in its repository, and the functions below decide which accounts
count and turn the counts into a :class:`Health` or an :class:`AlertReport`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from token_ledger import _validation
from token_ledger.errors import InvalidInput


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


def _count(_thresholds: object, attribute: Any, value: object) -> None:
    _validation.non_negative_int(value, attribute.name)


def _optional_count(_thresholds: object, attribute: Any, value: object) -> None:
    if value is not None:
        _validation.non_negative_int(value, attribute.name)


def _window(_thresholds: object, attribute: Any, value: object) -> None:
    """A non-negative ``timedelta``, as :func:`_validation.instant_before` takes it.

    Asked for the instant that far before the earliest one, it checks the
    window and nothing else; :meth:`AlertThresholds.stale_at` and
    :meth:`AlertThresholds.failed_since` then compute the real cutoffs.
    """
    _validation.instant_before(_validation.EARLIEST_INSTANT, value, attribute.name)


def _ratio(_thresholds: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"usage_ratio must be a number, got {value!r}")
    if not 0 <= value <= 1:
        raise InvalidInput(f"usage_ratio must be between 0 and 1, got {value}")


@attrs.frozen(kw_only=True)
class AlertThresholds:
    """When each of the guide's three alerts triggers, checked once here.

    ``stale_resets`` counts accounts whose reset has been pending for longer
    than ``stale_after``; ``failed_transactions`` counts refused operations in
    the last ``failed_window``; ``high_usage`` counts accounts that used more
    than ``usage_ratio`` of their limit in the current period (the guide only
    watches it, so by default it has no threshold). Each alert triggers when
    its value exceeds its threshold.
    """

    # Checked in this order (keyword-only, so the order is the checks', not the callers'):
    # of several bad values, the first one here is the one refused.
    stale_threshold: int = attrs.field(default=0, validator=_count)
    failed_threshold: int = attrs.field(default=10, validator=_count)
    high_usage_threshold: int | None = attrs.field(default=None, validator=_optional_count)
    usage_ratio: float = attrs.field(default=0.9, validator=_ratio)
    stale_after: timedelta = attrs.field(default=timedelta(days=1), validator=_window)
    failed_window: timedelta = attrs.field(default=timedelta(hours=1), validator=_window)

    def stale_at(self, now: datetime) -> datetime:
        """An account with a reset pending at this instant is overdue at ``now``."""
        return _validation.instant_before(now, self.stale_after, "stale_after")

    def failed_since(self, now: datetime) -> datetime:
        """Refusals from this instant on count towards ``failed_transactions``."""
        return _validation.instant_before(now, self.failed_window, "failed_window")


def health(total: int, stale: int, now: datetime) -> Health:
    """The guide's health check from ``total`` accounts, ``stale`` of them behind at ``now``."""
    return Health(total_users=total, current=total - stale, stale=stale, checked_at=now)


def alerts(
    thresholds: AlertThresholds, overdue: int, failed: int, high: int, now: datetime
) -> AlertReport:
    """The guide's three alerts from their counts at ``now``: ``overdue`` accounts
    (behind at :meth:`~AlertThresholds.stale_at`), ``failed`` refusals and ``high`` usage."""
    return AlertReport(
        stale_resets=Alert(
            "stale_resets",
            overdue,
            thresholds.stale_threshold,
            "accounts whose reset has been pending for more than"
            f" {_duration(thresholds.stale_after)}",
        ),
        failed_transactions=Alert(
            "failed_transactions",
            failed,
            thresholds.failed_threshold,
            f"refused operations in the last {_duration(thresholds.failed_window)}",
        ),
        high_usage=Alert(
            "high_usage",
            high,
            thresholds.high_usage_threshold,
            f"accounts above {thresholds.usage_ratio:.0%} of their limit this period",
        ),
        checked_at=now,
    )


def _duration(delta: timedelta) -> str:
    """``1 day``, ``1 hour``, ``90 minutes``: how an operator would say it."""
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, rest = divmod(delta.total_seconds(), seconds)
        if count and not rest:
            return f"{int(count)} {unit}{'s' if count != 1 else ''}"
    return str(delta)
