"""Rows of the ledger's tables as domain values, shared by the SQL adapters.

Both adapters select these columns in this order; they differ only in how an
instant and a JSON document come back from their driver, which they pass in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from token_ledger.account import TokenAccount
from token_ledger.grants import Grant, Reservation
from token_ledger.transactions import Effects, Transaction

ACCOUNT_COLUMNS = (
    "user_id, monthly_limit, monthly_tokens_used, last_monthly_reset,"
    " created_at, updated_at, reset_anchor, overage_limit, grant_balance, reserved_tokens"
)
TRANSACTION_COLUMNS = (
    "id, user_id, operation_type, amount, created_at, balance_after, success, feature,"
    " operation_context, idempotency_key, effects, reference"
)
GRANT_COLUMNS = "id, user_id, amount, remaining, created_at, expires_at, reason"
RESERVATION_COLUMNS = "id, user_id, amount, created_at, expires_at, status, feature"


@attrs.frozen
class RowReader:
    """Builds values from rows, with the driver's ways of returning instants and JSON."""

    instant: Callable[[Any], datetime]
    document: Callable[[Any], Any]

    def _optional_instant(self, value: Any) -> datetime | None:
        return None if value is None else self.instant(value)

    def account(self, row: Sequence[Any]) -> TokenAccount:
        return TokenAccount(
            user_id=row[0],
            monthly_limit=row[1],
            monthly_tokens_used=row[2],
            last_monthly_reset=self.instant(row[3]),
            created_at=self.instant(row[4]),
            updated_at=self.instant(row[5]),
            reset_anchor=self._optional_instant(row[6]),
            overage_limit=row[7],
            grant_balance=row[8],
            reserved_tokens=row[9],
        )

    def transaction(self, row: Sequence[Any]) -> Transaction:
        return Transaction(
            id=row[0],
            user_id=row[1],
            operation_type=row[2],
            amount=row[3],
            created_at=self.instant(row[4]),
            balance_after=row[5],
            success=bool(row[6]),
            feature=row[7],
            operation_context=self.document(row[8]),
            idempotency_key=row[9],
            effects=Effects.from_dict(self.document(row[10])),
            reference=row[11],
        )

    def grant(self, row: Sequence[Any]) -> Grant:
        return Grant(
            id=row[0],
            user_id=row[1],
            amount=row[2],
            remaining=row[3],
            created_at=self.instant(row[4]),
            expires_at=self._optional_instant(row[5]),
            reason=row[6],
        )

    def reservation(self, row: Sequence[Any]) -> Reservation:
        return Reservation(
            id=row[0],
            user_id=row[1],
            amount=row[2],
            created_at=self.instant(row[3]),
            expires_at=self.instant(row[4]),
            status=row[5],
            feature=row[6],
        )


def attach_balances(
    accounts: list[TokenAccount],
    grants: Mapping[str, list[Grant]],
    holds: Mapping[str, list[Reservation]],
) -> list[TokenAccount]:
    """The accounts with the grants and held reservations read for them, by ``user_id``."""
    return [
        attrs.evolve(
            account,
            grants=tuple(grants.get(account.user_id, ())),
            holds=tuple(holds.get(account.user_id, ())),
        )
        if account.grant_balance > 0 or account.reserved_tokens > 0
        else account
        for account in accounts
    ]
