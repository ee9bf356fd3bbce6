"""Ledger entries: the rows of the seed's ``token_transactions`` table."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs


class OperationType(str, enum.Enum):
    """What an entry records; compares equal to the seed's strings (``"deduct"``)."""

    DEDUCT = "deduct"
    RESET = "reset"
    LIMIT_CHANGE = "limit_change"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Transaction:
    """One immutable entry of the ledger.

    ``id`` is assigned by the repository when the entry is stored and grows
    with insertion order, which is what "newest first" means in ``history``
    even when an injected clock moves backwards. ``balance_after`` is the
    monthly remaining once the operation has applied.
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, for exports and APIs."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "operation_type": self.operation_type.value,
            "amount": self.amount,
            "feature": self.feature,
            "operation_context": self.operation_context,
            "success": self.success,
            "created_at": self.created_at.isoformat(),
            "idempotency_key": self.idempotency_key,
            "balance_after": self.balance_after,
        }
