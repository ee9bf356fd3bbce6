"""Ledger entries: the rows of the seed's ``token_transactions`` table."""

from __future__ import annotations

import copy
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


COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "operation_type",
    "amount",
    "success",
    "balance_after",
    "feature",
    "operation_context",
    "idempotency_key",
)
"""The keys of :meth:`Transaction.to_dict`, in the order history tables show them."""


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
        """Plain values keyed by the seed's ``token_transactions`` columns, e.g. for a DataFrame.

        ``operation_type`` becomes its string and ``operation_context`` a copy,
        so changing the dict never changes the entry; instants stay aware
        datetimes (``json.dumps(entry.to_dict(), default=str)`` writes them).
        """
        values = {column: getattr(self, column) for column in COLUMNS}
        values["operation_type"] = self.operation_type.value
        values["operation_context"] = copy.deepcopy(self.operation_context)
        return values
