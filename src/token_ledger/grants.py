"""Grants and reservations: balances that live beside the monthly allowance."""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from token_ledger.errors import InvalidInput


@attrs.frozen
class Grant:
    """Tokens added on top of the allowance (a purchase, a promotion); never reset.

    A grant stops counting at ``expires_at``; its ``remaining`` is written off
    with an ``expire`` entry the next time the account is written. Grants are
    spent by ``priority`` (lower first), then soonest expiry, then oldest:
    OpenMeter's order. A voided grant (``voided_at``) has nothing left, for good.
    """

    id: str
    user_id: str
    amount: int
    remaining: int
    created_at: datetime
    expires_at: datetime | None = None
    reason: str | None = None
    priority: int = 0
    voided_at: datetime | None = None

    @classmethod
    def offered(
        cls,
        grant_id: str,
        user_id: str,
        amount: int,
        now: datetime,
        expires_at: datetime | None = None,
        reason: str | None = None,
        priority: int = 0,
    ) -> Grant:
        """A new grant of ``amount`` at ``now``; one that expires must do so in the future."""
        if expires_at is not None and expires_at <= now:
            raise InvalidInput(f"expires_at must be in the future, got {expires_at.isoformat()}")
        return cls(grant_id, user_id, amount, amount, now, expires_at, reason, priority)

    def is_live(self, now: datetime) -> bool:
        return self.remaining > 0 and (self.expires_at is None or now < self.expires_at)

    def spending_order(self) -> tuple[int, bool, datetime, datetime, str]:
        """Lowest priority number first; then soonest expiry, grants that never expire
        last; then oldest first."""
        return (
            self.priority,
            self.expires_at is None,
            self.expires_at or self.created_at,
            self.created_at,
            self.id,
        )


class ReservationStatus(str, enum.Enum):
    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Reservation:
    """Tokens held for work whose cost is known only afterwards (an LLM call).

    Held tokens are unavailable to everything else until the reservation is
    committed (the actual cost is spent, the rest released), released, or
    passes ``expires_at``, after which it releases itself at the next write.
    """

    id: str
    user_id: str
    amount: int
    created_at: datetime
    expires_at: datetime
    status: ReservationStatus = attrs.field(
        default=ReservationStatus.HELD, converter=ReservationStatus
    )
    feature: str | None = None

    def is_held(self, now: datetime) -> bool:
        return self.status is ReservationStatus.HELD and now < self.expires_at
