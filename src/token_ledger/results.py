"""What the ledger's calls return: the seed's JSON, and tables for notebooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from token_ledger import _html
from token_ledger.account import TokenAccount
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.transactions import Transaction
from token_ledger.windows import window_end


@attrs.frozen
class WindowStatus:
    """One window cap of an account as it runs now (:mod:`token_ledger.windows`)."""

    unit: str
    cap: int
    used: int
    remaining: int
    """What the window lets one more deduction take: its cap, less use and holds."""
    resets_at: datetime


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
    """Allowance, live grants and overage left, less what reservations hold (and no more
    than any window of the account has left)."""
    windows: tuple[WindowStatus, ...] = ()
    organisation_id: str | None = None
    organisation_remaining: int | None = None
    """For a member: the least ``total_remaining`` of the organisations above it."""
    available: int = 0
    """What one more deduction may take: ``total_remaining``, and for a member no more
    than ``organisation_remaining``."""

    @classmethod
    def of(
        cls,
        account: TokenAccount,
        policy: MonthlyResetPolicy,
        now: datetime,
        above: tuple[TokenAccount, ...] = (),
    ) -> TokenStatus:
        """The account as a reader sees it at ``now``: a pending reset shown, not written.

        ``above`` are the organisations above it, whose least spendable is shown.
        """
        current = account.as_of(policy, now).account
        period = current.current_period(policy, now)
        zone = current.calendar_zone(policy)
        organisation_remaining = (
            min(a.as_of(policy, now).account.spendable for a in above) if above else None
        )
        own = current.spendable
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
            total_remaining=own,
            windows=tuple(
                WindowStatus(
                    w.unit,
                    w.cap,
                    w.used,
                    w.remaining(current.reserved_tokens),
                    window_end(w.unit, w.start or now, zone),
                )
                for w in current.windows
            ),
            organisation_id=current.organisation_id,
            organisation_remaining=organisation_remaining,
            available=own if organisation_remaining is None else min(own, organisation_remaining),
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
        fields = [f for f in attrs.fields(TokenStatus) if f.name != "windows"]
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
