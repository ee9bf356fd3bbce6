"""A user's allowance: one row of the seed's ``user_tokens`` table, with its grants and holds."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, overload

import attrs

from token_ledger._validation import positive_int
from token_ledger.change import Change, entry_of, stamped
from token_ledger.errors import InvalidAmount, ReservationClosed
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.policy import MonthlyResetPolicy, Period
from token_ledger.refunds import earlier_refunds, plan_refund, refundable
from token_ledger.spending import spend
from token_ledger.transactions import Effects, OperationType, Transaction

__all__ = ["Change", "TokenAccount", "check_monthly_limit"]


def check_monthly_limit(value: object) -> int:
    """Limits are positive: the seed's high-usage alert divides by them."""
    return positive_int(value, "monthly_limit")


@attrs.frozen
class TokenAccount:
    """The stored state of one user's allowance.

    ``monthly_tokens_used`` belongs to the period starting at
    ``last_monthly_reset``; past ``monthly_limit`` it is overage, allowed up to
    ``overage_limit``. ``grant_balance`` and ``reserved_tokens`` are the sums of
    ``grants`` and ``holds``, kept on the row so that an account without either
    is read in one query. When the stored period is over, readers see usage as
    zero (:meth:`as_of`) and the next write persists the reset. Methods are pure
    and return a :class:`Change`.
    """

    user_id: str
    monthly_limit: int
    monthly_tokens_used: int
    last_monthly_reset: datetime
    created_at: datetime
    updated_at: datetime
    reset_anchor: datetime | None = None
    overage_limit: int = 0
    grant_balance: int = 0
    reserved_tokens: int = 0
    grants: tuple[Grant, ...] = ()
    holds: tuple[Reservation, ...] = ()

    @classmethod
    def open(
        cls,
        user_id: str,
        monthly_limit: int,
        policy: MonthlyResetPolicy,
        now: datetime,
        reset_anchor: datetime | None = None,
    ) -> TokenAccount:
        """A new account whose first period is the one containing ``now``."""
        return cls(
            user_id=user_id,
            monthly_limit=monthly_limit,
            monthly_tokens_used=0,
            last_monthly_reset=policy.period(now, reset_anchor).start,
            created_at=now,
            updated_at=now,
            reset_anchor=reset_anchor,
        )

    @property
    def monthly_remaining(self) -> int:
        """Never negative, even after a downgrade below current usage."""
        return max(0, self.monthly_limit - self.monthly_tokens_used)

    @property
    def overage_remaining(self) -> int:
        return max(
            0,
            self.monthly_limit
            + self.overage_limit
            - max(self.monthly_tokens_used, self.monthly_limit),
        )

    @property
    def spendable(self) -> int:
        """What one more deduction may take: allowance, grants and overage, less holds."""
        total = self.monthly_remaining + self.grant_balance + self.overage_remaining
        return max(0, total - self.reserved_tokens)

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
        """Whether a reset is pending: the stored usage belongs to an ended period."""
        return policy.period(now, self.reset_anchor).start > self.last_monthly_reset

    # the passage of time

    @stamped
    def as_of(self, policy: MonthlyResetPolicy, now: datetime) -> Change:
        """The account as it is at ``now``: reset if a period boundary was crossed
        (exactly one ``reset`` entry however many periods were skipped), expired
        grants written off and expired holds released."""
        reset = self._reset(policy, now)
        return reset.then(reset.account._expire(now))

    def _reset(self, policy: MonthlyResetPolicy, now: datetime) -> Change:
        period_start = policy.period(now, self.reset_anchor).start
        if period_start <= self.last_monthly_reset:
            return Change(self)
        reset = attrs.evolve(
            self, monthly_tokens_used=0, last_monthly_reset=period_start, updated_at=now
        )
        entry = entry_of(
            self,
            reset,
            OperationType.RESET,
            self.monthly_tokens_used,
            now,
            effects=Effects(usage=-self.monthly_tokens_used),
            operation_context={
                "previous_used": self.monthly_tokens_used,
                "previous_period_start": _iso(self.last_monthly_reset),
                "period_start": _iso(period_start),
            },
        )
        return Change(reset, (entry,))

    def _expire(self, now: datetime) -> Change:
        expired_grants = [g for g in self.grants if not g.is_live(now)]
        expired_holds = [h for h in self.holds if not h.is_held(now)]
        if not expired_grants and not expired_holds:
            return Change(self)
        written_off = sum(grant.remaining for grant in expired_grants)
        released = sum(hold.amount for hold in expired_holds)
        account = attrs.evolve(
            self,
            grants=tuple(g for g in self.grants if g.is_live(now)),
            holds=tuple(h for h in self.holds if h.is_held(now)),
            grant_balance=self.grant_balance - written_off,
            reserved_tokens=self.reserved_tokens - released,
            updated_at=now,
        )
        entries = [
            entry_of(
                self,
                account,
                OperationType.EXPIRE,
                grant.remaining,
                now,
                reference=grant.id,
                effects=Effects(grants={grant.id: -grant.remaining}),
                operation_context={"expires_at": _iso(grant.expires_at)},
            )
            for grant in expired_grants
        ] + [
            entry_of(
                self,
                account,
                OperationType.RELEASE,
                hold.amount,
                now,
                feature=hold.feature,
                reference=hold.id,
                effects=Effects(reserved=-hold.amount),
                operation_context={"reason": "expired", "expires_at": _iso(hold.expires_at)},
            )
            for hold in expired_holds
        ]
        return Change(
            account,
            tuple(entries),
            tuple(attrs.evolve(grant, remaining=0) for grant in expired_grants),
            tuple(attrs.evolve(hold, status=ReservationStatus.EXPIRED) for hold in expired_holds),
        )

    # spending

    @stamped
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
        """Settle, then spend ``amount``; the last entry says whether it succeeded.

        Spending takes the monthly allowance first, then grants (soonest expiry
        first), then overage. A refusal is a change too: the failed entry is
        recorded so that it can be alerted on.
        """
        current = self.as_of(policy, now)
        return current.then(
            spend(
                current.account,
                OperationType.DEDUCT,
                amount,
                now,
                feature=feature,
                operation_context=dict(context or {}),
                idempotency_key=idempotency_key,
            )
        )

    # grants, reservations and refunds

    @stamped
    def add_grant(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        grant: Grant,
        *,
        idempotency_key: str | None,
    ) -> Change:
        current = self.as_of(policy, now)
        account = attrs.evolve(
            current.account,
            grants=(*current.account.grants, grant),
            grant_balance=current.account.grant_balance + grant.amount,
            updated_at=now,
        )
        entry = entry_of(
            self,
            account,
            OperationType.GRANT,
            grant.amount,
            now,
            reference=grant.id,
            idempotency_key=idempotency_key,
            effects=Effects(grants={grant.id: grant.amount}),
            operation_context={"reason": grant.reason, "expires_at": _iso(grant.expires_at)},
        )
        return current.then(Change(account, (entry,), (grant,)))

    @stamped
    def reserve(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        hold: Reservation,
        *,
        idempotency_key: str | None,
    ) -> Change:
        """Hold ``hold.amount`` if it can be spent now, or record a refusal."""
        current = self.as_of(policy, now)
        before = current.account
        fields: dict[str, Any] = {
            "feature": hold.feature,
            "reference": hold.id,
            "idempotency_key": idempotency_key,
            "operation_context": {"expires_at": _iso(hold.expires_at)},
        }
        if hold.amount > before.spendable:
            refused = entry_of(
                self, before, OperationType.RESERVE, hold.amount, now, success=False, **fields
            )
            return current.then(Change(before, (refused,)))
        account = attrs.evolve(
            before,
            holds=(*before.holds, hold),
            reserved_tokens=before.reserved_tokens + hold.amount,
            updated_at=now,
        )
        entry = entry_of(
            self,
            account,
            OperationType.RESERVE,
            hold.amount,
            now,
            effects=Effects(reserved=hold.amount),
            **fields,
        )
        return current.then(Change(account, (entry,), (), (hold,)))

    @stamped
    def settle_hold(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        reservation: Reservation,
        actual: int | None,
    ) -> Change:
        """Commit ``actual`` tokens of a hold (spending them, releasing the rest) or,
        with ``actual=None``, release it whole.

        ``reservation`` is the stored row; the hold must still be held at
        ``now`` (:class:`ReservationClosed` otherwise) and hold at least ``actual``.
        """
        hold = next((h for h in self.holds if h.id == reservation.id), None)
        if hold is None or not hold.is_held(now):
            status = ReservationStatus.EXPIRED if hold is not None else reservation.status
            raise ReservationClosed(reservation.id, str(status))
        if actual is not None and actual > hold.amount:
            raise InvalidAmount(
                f"cannot commit {actual} tokens: reservation {hold.id!r} holds {hold.amount}"
            )
        current = self.as_of(policy, now)
        before = current.account
        hold_id = hold.id
        released = attrs.evolve(
            before,
            holds=tuple(h for h in before.holds if h.id != hold_id),
            reserved_tokens=before.reserved_tokens - hold.amount,
            updated_at=now,
        )
        fields: dict[str, Any] = {"feature": hold.feature, "reference": hold.id}
        if actual is None:
            entry = entry_of(
                self,
                released,
                OperationType.RELEASE,
                hold.amount,
                now,
                effects=Effects(reserved=-hold.amount),
                operation_context={"reason": "released"},
                **fields,
            )
            closed = attrs.evolve(hold, status=ReservationStatus.RELEASED)
            return current.then(Change(released, (entry,), (), (closed,)))
        spent = spend(
            released,
            OperationType.COMMIT,
            actual,
            now,
            base=Effects(reserved=-hold.amount),
            operation_context={"reserved": hold.amount},
            **fields,
        )
        if not spent.last_entry.success:
            return current.then(Change(before, spent.entries))
        closed = attrs.evolve(hold, status=ReservationStatus.COMMITTED)
        return current.then(attrs.evolve(spent, reservations=(closed,)))

    @stamped
    def refund(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        spent: Transaction,
        referencing: Iterable[Transaction],
        amount: int | None,
        *,
        credit_grant_id: str,
        reason: str | None,
        idempotency_key: str | None,
    ) -> Change:
        """Give back ``amount`` (default: all that is left) of the successful deduction
        ``spent``; ``referencing`` are the entries that reference it, earlier refunds among
        them. Where each token goes is :func:`~token_ledger.refunds.plan_refund`'s rule; a
        credit becomes a new grant that never expires."""
        earlier = earlier_refunds(referencing)
        amount = refundable(spent, earlier, amount)
        current = self.as_of(policy, now)
        account = current.account
        live = {grant.id: grant for grant in account.grants if grant.is_live(now)}
        plan = plan_refund(
            spent,
            sum(refund.amount for refund in earlier),
            amount,
            period_start=account.last_monthly_reset,
            live_grant_ids=live.keys(),
        )
        returned = {
            g: attrs.evolve(live[g], remaining=live[g].remaining + n) for g, n in plan.grants
        }
        credited = (
            (
                Grant(
                    credit_grant_id,
                    self.user_id,
                    plan.credit,
                    plan.credit,
                    now,
                    None,
                    f"refund of #{spent.id}",
                ),
            )
            if plan.credit
            else ()
        )
        account = attrs.evolve(
            account,
            monthly_tokens_used=account.monthly_tokens_used - plan.usage,
            grants=(*(returned.get(g.id, g) for g in account.grants), *credited),
            grant_balance=account.grant_balance + sum(n for _, n in plan.grants) + plan.credit,
            updated_at=now,
        )
        entry = entry_of(
            self,
            account,
            OperationType.REFUND,
            amount,
            now,
            feature=spent.feature,
            reference=str(spent.id),
            idempotency_key=idempotency_key,
            effects=Effects(
                usage=-plan.usage,
                grants=(*plan.grants, *((g.id, g.amount) for g in credited)),
            ),
            operation_context={"reason": reason},
        )
        return current.then(Change(account, (entry,), (*returned.values(), *credited)))

    @stamped
    def with_limits(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        monthly_limit: int,
        overage_limit: int,
    ) -> Change:
        """Settle, then change the limits; usage is kept, as on a plan change."""
        current = self.as_of(policy, now)
        before = current.account
        account = attrs.evolve(
            before, monthly_limit=monthly_limit, overage_limit=overage_limit, updated_at=now
        )
        context: dict[str, Any] = {"previous_limit": before.monthly_limit}
        if overage_limit != before.overage_limit:
            context["previous_overage_limit"] = before.overage_limit
            context["overage_limit"] = overage_limit
        entry = entry_of(
            self, account, OperationType.LIMIT_CHANGE, monthly_limit, now, operation_context=context
        )
        return current.then(Change(account, (entry,)))


@overload
def _iso(instant: datetime) -> str: ...
@overload
def _iso(instant: None) -> None: ...
def _iso(instant: datetime | None) -> str | None:
    """Fixed-width UTC text, which SQL can produce too (``to_char``, ``strftime``)."""
    if instant is None:
        return None
    return instant.astimezone(timezone.utc).isoformat(timespec="microseconds")
