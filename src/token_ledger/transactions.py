"""Ledger entries: the rows of the seed's ``token_transactions`` table."""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from token_ledger.errors import IdempotencyConflict


class OperationType(str, enum.Enum):
    """What an entry records; compares equal to the seed's strings (``"deduct"``)."""

    DEDUCT = "deduct"
    RESET = "reset"
    LIMIT_CHANGE = "limit_change"
    REFUND = "refund"
    GRANT = "grant"
    EXPIRE = "expire"
    RESERVE = "reserve"
    COMMIT = "commit"
    RELEASE = "release"
    VOID = "void"

    def __str__(self) -> str:
        return self.value


def _grant_items(
    value: Mapping[str, int] | tuple[tuple[str, int], ...],
) -> tuple[tuple[str, int], ...]:
    if not value:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((key, amount) for key, amount in items if amount))


@attrs.frozen
class Effects:
    """How an entry changed the stored balances, so the log alone can rebuild them.

    ``usage`` is the change of ``monthly_tokens_used`` (a reset is minus the
    usage it cleared), ``reserved`` the change of tokens held by reservations,
    ``grants`` the change of each grant's remaining balance by grant id.
    :meth:`~token_ledger.TokenLedger.reconcile` sums them and compares.
    """

    usage: int = 0
    reserved: int = 0
    grants: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_grant_items)

    def __add__(self, other: Effects) -> Effects:
        grants = dict(self.grants)
        for grant_id, amount in other.grants:
            grants[grant_id] = grants.get(grant_id, 0) + amount
        return Effects(self.usage + other.usage, self.reserved + other.reserved, grants)

    def to_dict(self) -> dict[str, Any]:
        """Zeros are left out: most entries touch one balance."""
        encoded: dict[str, Any] = {}
        if self.usage:
            encoded["usage"] = self.usage
        if self.reserved:
            encoded["reserved"] = self.reserved
        if self.grants:
            encoded["grants"] = dict(self.grants)
        return encoded

    @classmethod
    def from_dict(cls, encoded: Mapping[str, Any]) -> Effects:
        return cls(
            usage=int(encoded.get("usage", 0)),
            reserved=int(encoded.get("reserved", 0)),
            grants={key: int(value) for key, value in encoded.get("grants", {}).items()},
        )


@attrs.frozen
class Transaction:
    """One immutable entry of the ledger.

    ``id`` is assigned by the repository when the entry is stored and grows
    with insertion order, which is what "newest first" means in ``history``
    even when an injected clock moves backwards. ``balance_after`` is the
    monthly remaining once the operation has applied. ``reference`` ties an
    entry to what it is about: the refunded entry's id, a grant or a
    reservation id.
    """

    user_id: str
    operation_type: OperationType = attrs.field(converter=OperationType)
    amount: int
    created_at: datetime
    balance_after: int
    success: bool = True
    feature: str | None = None
    operation_context: dict[str, Any] = attrs.field(factory=dict, hash=False)
    idempotency_key: str | None = None
    id: int | None = None
    effects: Effects = attrs.field(factory=Effects)
    reference: str | None = None
    member_entry_id: int | None = None
    """On an organisation's entry, the member's entry it records the organisation's share
    of (a member's deduction is spent from every budget above it, each with an entry)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, for exports and APIs."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "operation_type": self.operation_type.value,
            "amount": self.amount,
            "feature": self.feature,
            "operation_context": copy.deepcopy(self.operation_context),
            "success": self.success,
            "created_at": self.created_at.isoformat(),
            "idempotency_key": self.idempotency_key,
            "balance_after": self.balance_after,
            "effects": self.effects.to_dict(),
            "reference": self.reference,
            "member_entry_id": self.member_entry_id,
        }


def replay(
    prior: Transaction,
    operation_type: OperationType,
    user_id: str,
    amount: int | None,
    feature: str | None = None,
) -> Transaction:
    """The entry an idempotent retry answers with, or a conflict if the retry differs.

    ``amount=None`` (a refund of "all that is left") matches any amount.
    """
    original = (prior.operation_type, prior.user_id, prior.feature)
    if original != (operation_type, user_id, feature) or amount not in (None, prior.amount):
        raise IdempotencyConflict(
            prior.idempotency_key or "",
            f"{prior.operation_type} user={prior.user_id!r} amount={prior.amount}"
            f" feature={prior.feature!r}",
        )
    return prior
