"""What the ledger's calls return: the seed's JSON, and tables for notebooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from token_ledger import _html
from token_ledger.account import TokenAccount
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.transactions import Transaction


@attrs.frozen
class TokenStatus:
    """What a user may still spend, as the seed's status endpoint reports it."""

    user_id: str
    monthly_used: int
    monthly_limit: int
    monthly_remaining: int
    period_start: datetime
    next_reset: datetime
    grant_balance: int = 0
    reserved: int = 0
    overage_limit: int = 0
    overage_used: int = 0
    total_remaining: int = 0
    """Allowance, live grants and overage left, less what reservations hold."""

    @classmethod
    def of(cls, account: TokenAccount, policy: MonthlyResetPolicy, now: datetime) -> TokenStatus:
        """The account as a reader sees it at ``now``: a pending reset shown, not written."""
        current = account.as_of(policy, now).account
        period = current.current_period(policy, now)
        return cls(
            user_id=current.user_id,
            monthly_used=current.monthly_tokens_used,
            monthly_limit=current.monthly_limit,
            monthly_remaining=current.monthly_remaining,
            period_start=period.start,
            next_reset=period.end,
            grant_balance=current.grant_balance,
            reserved=current.reserved_tokens,
            overage_limit=current.overage_limit,
            overage_used=max(0, current.monthly_tokens_used - current.monthly_limit),
            total_remaining=current.spendable,
        )

    def to_dict(self) -> dict[str, int]:
        """The seed's JSON: ``{"monthlyUsed", "monthlyLimit", "monthlyRemaining"}``."""
        return {
            "monthlyUsed": self.monthly_used,
            "monthlyLimit": self.monthly_limit,
            "monthlyRemaining": self.monthly_remaining,
        }

    def _repr_html_(self) -> str:
        """A one-row table, which notebooks show in place of the repr."""
        fields = attrs.fields(TokenStatus)
        return _html.table(
            [field.name for field in fields], [[getattr(self, field.name) for field in fields]]
        )


class History(list[Transaction]):
    """What :meth:`TokenLedger.history` returns: a plain list that notebooks show as a table."""

    def to_dicts(self) -> list[dict[str, Any]]:
        """One :meth:`Transaction.to_dict` per entry: ``pandas.DataFrame(history.to_dicts())``."""
        return [entry.to_dict() for entry in self]

    def _repr_html_(self) -> str:
        """A table with one row per entry, its columns the keys of :meth:`Transaction.to_dict`."""
        rows = self.to_dicts()
        if not rows:
            return "<p>No ledger entries.</p>"
        return _html.table(list(rows[0]), [list(row.values()) for row in rows])


@attrs.frozen
class DeductResult:
    """The outcome of a deduction, carrying the ledger entry that records it."""

    success: bool
    monthly_remaining: int
    transaction: Transaction

    def to_dict(self) -> dict[str, Any]:
        """The seed's JSON: ``{"success": true, "monthlyRemaining": X}``."""
        return {"success": self.success, "monthlyRemaining": self.monthly_remaining}
