"""A user's allowance: one row of the seed's ``user_tokens`` table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from token_ledger.policy import MonthlyResetPolicy, Period
from token_ledger.transactions import OperationType, Transaction


@attrs.frozen
class Change:
    """An account as an operation leaves it, with the ledger entries that record why."""

    account: TokenAccount
    entries: tuple[Transaction, ...] = ()


@attrs.frozen
class TokenAccount:
    """The stored state of one user's allowance.

    ``monthly_tokens_used`` belongs to the period starting at
    ``last_monthly_reset``. When that period is over the stored usage is stale:
    readers see it as zero (:meth:`as_of`) and the next write persists the
    reset. Methods are pure and return a :class:`Change`.
    """

    user_id: str
    monthly_limit: int
    monthly_tokens_used: int
    last_monthly_reset: datetime
    created_at: datetime
    updated_at: datetime
    reset_anchor: datetime | None = None

    @property
    def monthly_remaining(self) -> int:
        """Never negative, even after a downgrade below current usage."""
        return max(0, self.monthly_limit - self.monthly_tokens_used)

    def current_period(self, policy: MonthlyResetPolicy, now: datetime) -> Period:
        """The period at ``now``, which never starts before the stored one.

        A clock that goes backwards keeps the stored period rather than moving
        it back, so it can never cause a second reset of the same crossing.
        """
        period = policy.period(now, self.reset_anchor)
        if period.start < self.last_monthly_reset:
            return policy.period(self.last_monthly_reset, self.reset_anchor)
        return period

    def is_stale(self, policy: MonthlyResetPolicy, now: datetime) -> bool:
        return policy.period(now, self.reset_anchor).start > self.last_monthly_reset

    def as_of(self, policy: MonthlyResetPolicy, now: datetime) -> Change:
        """The account as it is at ``now``: reset once if a period boundary was crossed.

        However many periods were skipped, there is exactly one ``reset`` entry.
        """
        period_start = policy.period(now, self.reset_anchor).start
        if period_start <= self.last_monthly_reset:
            return Change(self)
        reset = attrs.evolve(
            self, monthly_tokens_used=0, last_monthly_reset=period_start, updated_at=now
        )
        entry = Transaction(
            user_id=self.user_id,
            operation_type=OperationType.RESET,
            amount=self.monthly_tokens_used,
            created_at=now,
            balance_after=reset.monthly_remaining,
            operation_context={
                "previous_used": self.monthly_tokens_used,
                "previous_period_start": self.last_monthly_reset.isoformat(),
                "period_start": period_start.isoformat(),
            },
        )
        return Change(reset, (entry,))

    def deduct(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        amount: int,
        *,
        feature: str | None = None,
        context: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Change:
        """Reset if due, then spend ``amount``; the last entry says whether it succeeded.

        A refusal is a change too: the failed entry is recorded so it can be alerted on.
        """
        current = self.as_of(policy, now)
        account = current.account
        success = amount <= account.monthly_remaining
        if success:
            account = attrs.evolve(
                account,
                monthly_tokens_used=account.monthly_tokens_used + amount,
                updated_at=now,
            )
        entry = Transaction(
            user_id=self.user_id,
            operation_type=OperationType.DEDUCT,
            amount=amount,
            created_at=now,
            balance_after=account.monthly_remaining,
            success=success,
            feature=feature,
            operation_context=dict(context or {}),
            idempotency_key=idempotency_key,
        )
        return Change(account, (*current.entries, entry))

    def with_limit(self, policy: MonthlyResetPolicy, now: datetime, monthly_limit: int) -> Change:
        """Reset if due, then change the limit; usage is kept, as on a plan upgrade."""
        current = self.as_of(policy, now)
        account = attrs.evolve(current.account, monthly_limit=monthly_limit, updated_at=now)
        entry = Transaction(
            user_id=self.user_id,
            operation_type=OperationType.LIMIT_CHANGE,
            amount=monthly_limit,
            created_at=now,
            balance_after=account.monthly_remaining,
            operation_context={"previous_limit": current.account.monthly_limit},
        )
        return Change(account, (*current.entries, entry))
