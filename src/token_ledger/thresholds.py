"""Threshold notifications: when a write crosses one, and what it records.

A :class:`Threshold` is a level of an account's spending: a share of its monthly
limit (``Threshold(80)``: 80 % used) or :meth:`Threshold.nothing_left` (total
remaining, what one more deduction may take, is 0). A write *crosses* a threshold
when it takes the account from below it to at or above it, compared with the
account as the write found it once settled (a pending reset written, expired
grants and holds written off): a new period therefore starts with every threshold
armed. Usage only grows within a period, unless a refund or a raised limit moves
it back below a threshold, which arms it again; so each arming fires once.

The rule is pure (:func:`crossed`); the operations record a :class:`Notification`
for each crossing in the unit of work of the write, and the account's lock, which
every write takes, keeps racing writers from both seeing the same crossing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from token_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from token_ledger.account import TokenAccount

__all__ = [
    "MAX_PERCENT",
    "MAX_THRESHOLDS",
    "Notification",
    "Threshold",
    "check_thresholds",
    "crossed",
    "decode",
    "encode",
    "in_effect",
]

MAX_PERCENT = 1000
"""The highest share of the limit a threshold may name: usage can pass 100 % with overage."""
MAX_THRESHOLDS = 32
NOTHING_LEFT_KEY = "nothing_left"


def _check_percent(_threshold: object, _attribute: object, value: int | None) -> None:
    """``value`` is whatever the caller passed: it is checked here, at run time."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"a threshold's percent must be a whole number (int), got {value!r}")
    if not 1 <= value <= MAX_PERCENT:
        raise InvalidInput(
            f"a threshold's percent must be between 1 and {MAX_PERCENT}, got {value}"
        )


@attrs.frozen
class Threshold:
    """A level of spending that records a notification when a write reaches it.

    ``Threshold(80)`` is reached when usage this period is at least 80 % of the
    monthly limit (``monthly_tokens_used * 100 >= 80 * monthly_limit``, exactly, in
    whole numbers; past 100 % counts overage). :meth:`nothing_left` is reached when
    total remaining (allowance, live grants and overage, less what holds keep) is 0.
    """

    percent: int | None = attrs.field(validator=_check_percent)
    """A whole percent of the monthly limit, 1 to :data:`MAX_PERCENT`; ``None`` for
    :meth:`nothing_left`."""

    @classmethod
    def nothing_left(cls) -> Threshold:
        """Reached when the account's total remaining reaches 0."""
        return cls(None)

    @classmethod
    def parse(cls, text: object) -> Threshold:
        """``"80%"`` (or ``"80"``) or ``"nothing_left"``: what :attr:`key` writes."""
        if not isinstance(text, str):
            raise InvalidInput(f"a threshold must be text such as '80%', got {text!r}")
        written = text.strip()
        if written == NOTHING_LEFT_KEY:
            return cls.nothing_left()
        digits = written.removesuffix("%")
        if not digits.isascii() or not digits.isdigit():
            raise InvalidInput(
                f"a threshold is a whole percent such as '80%' or '{NOTHING_LEFT_KEY}',"
                f" got {text!r}"
            )
        return cls(int(digits))

    @property
    def key(self) -> str:
        """How the threshold is stored and shown: ``"80%"`` or ``"nothing_left"``."""
        return NOTHING_LEFT_KEY if self.percent is None else f"{self.percent}%"

    def reached(self, account: TokenAccount) -> bool:
        """Whether ``account``, as it stands, is at or above this threshold."""
        if self.percent is None:
            return account.spendable == 0
        return account.monthly_tokens_used * 100 >= self.percent * account.monthly_limit

    def _order(self) -> tuple[int, int]:
        return (1, 0) if self.percent is None else (0, self.percent)

    def __str__(self) -> str:
        return self.key


Thresholds = tuple[Threshold, ...]


def check_thresholds(value: object, name: str = "thresholds") -> Thresholds:
    """Thresholds as the ledger keeps them: ``Threshold`` values, each once, in order
    (percents rising, then nothing left). An empty collection means none."""
    if isinstance(value, (str, bytes, Threshold)) or not isinstance(value, Iterable):
        raise InvalidInput(
            f"{name} must be a collection of Threshold values"
            f" (such as [Threshold(80), Threshold.nothing_left()]), got {value!r}"
        )
    items = list(value)
    for item in items:
        if not isinstance(item, Threshold):
            raise InvalidInput(f"{name} must hold Threshold values, got {item!r}")
    unique = sorted(set(items), key=Threshold._order)
    if len(unique) > MAX_THRESHOLDS:
        raise InvalidInput(f"{name} may hold at most {MAX_THRESHOLDS} thresholds")
    return tuple(unique)


def in_effect(account: TokenAccount, defaults: Thresholds) -> Thresholds:
    """The account's own thresholds, or the ledger's ``defaults`` when it has none set."""
    own = account.thresholds
    return defaults if own is None else own


def crossed(thresholds: Thresholds, settled: TokenAccount, after: TokenAccount) -> Thresholds:
    """The thresholds a write crossed: reached by ``after``, not by ``settled``, the account
    as the write found it once settled (:meth:`~token_ledger.account.TokenAccount.as_of`)."""
    return tuple(t for t in thresholds if t.reached(after) and not t.reached(settled))


def encode(thresholds: Thresholds | None) -> str | None:
    """An account's own thresholds as its row stores them: ``"80%,100%,nothing_left"``,
    ``""`` for none, ``NULL`` (``None``) for the ledger's defaults."""
    return None if thresholds is None else ",".join(t.key for t in thresholds)


def decode(text: str | None) -> Thresholds | None:
    """The thresholds :func:`encode` wrote."""
    if text is None:
        return None
    return tuple(Threshold.parse(key) for key in text.split(",")) if text else ()


@attrs.frozen
class Notification:
    """A threshold one write crossed, recorded with that write.

    ``id`` grows in the order notifications commit, so a consumer that has seen up to
    one id has seen every notification before it (``notifications(after=id)``).
    ``occurrence`` counts the crossings of this threshold by this account in this
    period: 1, or more after a refund or a raised limit armed it again.
    """

    user_id: str
    threshold: Threshold
    period_start: datetime
    """The start of the period in which it was crossed."""
    created_at: datetime
    transaction_id: int | None
    """The entry of the write that crossed it (the deduction, commit, hold or limit change)."""
    monthly_used: int
    monthly_limit: int
    total_remaining: int
    """The account's figures just after the write."""
    occurrence: int = 1
    id: int | None = None

    @classmethod
    def of(
        cls, threshold: Threshold, after: TokenAccount, now: datetime, transaction_id: int | None
    ) -> Notification:
        return cls(
            user_id=after.user_id,
            threshold=threshold,
            period_start=after.last_monthly_reset,
            created_at=now,
            transaction_id=transaction_id,
            monthly_used=after.monthly_tokens_used,
            monthly_limit=after.monthly_limit,
            total_remaining=after.spendable,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: what the command line and webhooks send."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "threshold": self.threshold.key,
            "period_start": self.period_start.isoformat(),
            "occurrence": self.occurrence,
            "created_at": self.created_at.isoformat(),
            "transaction_id": self.transaction_id,
            "monthly_used": self.monthly_used,
            "monthly_limit": self.monthly_limit,
            "total_remaining": self.total_remaining,
        }
