"""The pure domain service: operations on accounts, at an instant, under a policy."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from token_ledger import _html, _validation
from token_ledger.account import Change, TokenAccount
from token_ledger.errors import IdempotencyConflict, InvalidAmount, InvalidInput
from token_ledger.grants import Grant, Reservation
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.transactions import OperationType, Transaction


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


@attrs.frozen
class Ledger:
    """Applies operations to accounts; everything here is pure and storage-free.

    :class:`~token_ledger.TokenLedger` loads accounts from a repository, asks
    the ledger what changes, and stores the result in one unit of work, so
    every adapter enforces exactly the same rules.
    """

    policy: MonthlyResetPolicy = attrs.field(factory=MonthlyResetPolicy)

    def open(
        self,
        user_id: str,
        monthly_limit: int,
        now: datetime,
        reset_anchor: datetime | None = None,
        overage_limit: int = 0,
    ) -> TokenAccount:
        return TokenAccount(
            user_id=user_id,
            monthly_limit=monthly_limit,
            overage_limit=overage_limit,
            monthly_tokens_used=0,
            last_monthly_reset=self.policy.period(now, reset_anchor).start,
            created_at=now,
            updated_at=now,
            reset_anchor=reset_anchor,
        )

    def status(self, account: TokenAccount, now: datetime) -> TokenStatus:
        current = account.as_of(self.policy, now).account
        period = current.current_period(self.policy, now)
        return TokenStatus(
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

    def reset(self, account: TokenAccount, now: datetime) -> Change:
        return account.as_of(self.policy, now)

    def deduct(
        self,
        account: TokenAccount,
        now: datetime,
        amount: int,
        *,
        feature: str | None = None,
        context: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Change:
        return account.deduct(
            self.policy,
            now,
            amount,
            feature=feature,
            context=context,
            idempotency_key=idempotency_key,
        )

    def set_limits(
        self, account: TokenAccount, now: datetime, monthly_limit: int, overage_limit: int
    ) -> Change:
        return account.with_limits(self.policy, now, monthly_limit, overage_limit)

    def grant(
        self, account: TokenAccount, now: datetime, grant: Grant, idempotency_key: str | None
    ) -> Change:
        return account.add_grant(self.policy, now, grant, idempotency_key=idempotency_key)

    def reserve(
        self,
        account: TokenAccount,
        now: datetime,
        hold: Reservation,
        idempotency_key: str | None,
    ) -> Change:
        return account.reserve(self.policy, now, hold, idempotency_key=idempotency_key)

    def settle_hold(
        self, account: TokenAccount, now: datetime, hold_id: str, actual: int | None
    ) -> Change:
        return account.settle_hold(self.policy, now, hold_id, actual)

    def refund(
        self,
        account: TokenAccount,
        now: datetime,
        spent: Transaction,
        earlier_refunds: list[Transaction],
        amount: int | None,
        *,
        credit_grant_id: str,
        reason: str | None,
        idempotency_key: str | None,
    ) -> Change:
        """Refund ``amount`` (default: all that is left) of a successful deduction."""
        if spent.operation_type not in REFUNDABLE or not spent.success:
            raise InvalidInput(f"entry #{spent.id} is not a successful deduction")
        left = spent.amount - sum(refund.amount for refund in earlier_refunds)
        if left == 0:
            raise InvalidAmount(f"entry #{spent.id} has already been refunded in full")
        amount = left if amount is None else amount
        if amount > left:
            raise InvalidAmount(
                f"cannot refund {amount} tokens of entry #{spent.id}: only {left} are left of it"
            )
        return account.refund(
            self.policy,
            now,
            spent,
            earlier_refunds,
            amount,
            credit_grant_id=credit_grant_id,
            reason=reason,
            idempotency_key=idempotency_key,
        )

    @staticmethod
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

    @staticmethod
    def check_limit(monthly_limit: object) -> int:
        """Limits are positive: the seed's high-usage alert divides by them."""
        return _validation.positive_int(monthly_limit, "monthly_limit")


REFUNDABLE = frozenset({OperationType.DEDUCT, OperationType.COMMIT})
