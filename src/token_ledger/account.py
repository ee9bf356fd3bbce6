"""A user's allowance: one row of the seed's ``user_tokens`` table, with its grants and holds."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, overload

import attrs

from token_ledger._validation import INT64_MAX
from token_ledger.errors import InvalidAmount
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.policy import MonthlyResetPolicy, Period
from token_ledger.transactions import Effects, OperationType, Transaction

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec

    P = ParamSpec("P")
    Operation = Callable[Concatenate["TokenAccount", MonthlyResetPolicy, datetime, P], "Change"]

_MICROSECOND = timedelta(microseconds=1)


def _merge_by_id(
    first: Sequence[Grant | Reservation], second: Sequence[Grant | Reservation]
) -> dict[str, Any]:
    merged: dict[str, Any] = {item.id: item for item in first}
    merged.update((item.id, item) for item in second)
    return merged


@attrs.frozen
class Change:
    """An account as an operation leaves it, the ledger entries that record why,
    and the grants and reservations whose rows must be written with it."""

    account: TokenAccount
    entries: tuple[Transaction, ...] = ()
    grants: tuple[Grant, ...] = ()
    reservations: tuple[Reservation, ...] = ()

    @property
    def last_entry(self) -> Transaction:
        return self.entries[-1]

    def then(self, later: Change) -> Change:
        """This change followed by ``later``, which was computed from this one's account."""
        if not (self.entries or self.grants or self.reservations):
            return later
        return Change(
            later.account,
            self.entries + later.entries,
            tuple(_merge_by_id(self.grants, later.grants).values()),
            tuple(_merge_by_id(self.reservations, later.reservations).values()),
        )


def _stamped(operation: Operation[P]) -> Operation[P]:
    """Make an operation at ``now`` change ``updated_at`` of the account it writes.

    ``updated_at`` becomes ``now``, or one microsecond before ``now`` when the
    stored value is ``now`` already (two writes at one instant, as on a frozen
    test clock). The optional SQL's triggers (:mod:`token_ledger.sql`) rely on
    it: they judge a write at its ``updated_at`` when the write changes it, and
    at the database clock otherwise. Never later than ``now``, so they never
    see a period the library has not reached: a stamp one microsecond *after*
    the stored value could fall on the 1st while the library is still in the
    last microsecond of the month. The stamp is applied once to the
    operation's result, so steps within one operation share it.
    """

    @functools.wraps(operation)
    def stamped(
        self: TokenAccount,
        policy: MonthlyResetPolicy,
        now: datetime,
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Change:
        change = operation(self, policy, now, *args, **kwargs)
        _refuse_overflow(change)
        if change.account is self or change.account == self:
            return change
        stamp = now - _MICROSECOND if now == self.updated_at else now
        return attrs.evolve(change, account=attrs.evolve(change.account, updated_at=stamp))

    return stamped


def _refuse_overflow(change: Change) -> None:
    """Every stored figure is a signed 64-bit integer on every engine.

    Inputs are checked one by one, but sums of them are not: a grant of
    ``2**63 - 1`` on top of a live one, or usage within a limit plus an
    overage that add up past it. Refusing the operation here, before anything
    is stored, keeps the engines alike (SQLite would raise ``OverflowError``,
    PostgreSQL "bigint out of range", memory would store the sum).
    """
    account = change.account
    figures = [
        ("usage", account.monthly_tokens_used),
        ("grant balance", account.grant_balance),
        ("reserved tokens", account.reserved_tokens),
        *(("grant balance", grant.remaining) for grant in change.grants),
    ]
    for name, value in figures:
        if value > INT64_MAX:
            raise InvalidAmount(
                f"the {name} of {account.user_id!r} would pass {INT64_MAX}, the largest"
                " figure a ledger stores; nothing was written"
            )


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

    @_stamped
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
        entry = self._entry(
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
            self._entry(
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
            self._entry(
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

    @_stamped
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
            current.account._spend(
                OperationType.DEDUCT,
                amount,
                now,
                feature=feature,
                operation_context=dict(context or {}),
                idempotency_key=idempotency_key,
            )
        )

    def _spend(
        self,
        operation_type: OperationType,
        amount: int,
        now: datetime,
        *,
        base: Effects | None = None,
        **entry_fields: Any,
    ) -> Change:
        """Take ``amount`` from the allowance, grants, then overage, or record a refusal."""
        if amount > self.spendable:
            refused = self._entry(self, operation_type, amount, now, success=False, **entry_fields)
            return Change(self, (refused,))
        from_allowance = min(amount, self.monthly_remaining)
        left = amount - from_allowance
        grants = []
        taken: dict[str, int] = {}
        for grant in sorted(self.grants, key=Grant.spending_order):
            take = min(left, grant.remaining)
            if take:
                taken[grant.id] = -take
                grants.append(attrs.evolve(grant, remaining=grant.remaining - take))
                left -= take
        usage = from_allowance + left
        changed = {grant.id: grant for grant in grants}
        account = attrs.evolve(
            self,
            monthly_tokens_used=self.monthly_tokens_used + usage,
            grant_balance=self.grant_balance - (amount - usage),
            grants=tuple(g for g in (changed.get(g.id, g) for g in self.grants) if g.remaining > 0),
            updated_at=now,
        )
        spent = Effects(usage=usage, grants=taken)
        effects = spent if base is None else base + spent
        entry = self._entry(account, operation_type, amount, now, effects=effects, **entry_fields)
        return Change(account, (entry,), tuple(grants))

    # grants, reservations and refunds

    @_stamped
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
        entry = self._entry(
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

    @_stamped
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
            refused = self._entry(
                before, OperationType.RESERVE, hold.amount, now, success=False, **fields
            )
            return current.then(Change(before, (refused,)))
        account = attrs.evolve(
            before,
            holds=(*before.holds, hold),
            reserved_tokens=before.reserved_tokens + hold.amount,
            updated_at=now,
        )
        entry = self._entry(
            account,
            OperationType.RESERVE,
            hold.amount,
            now,
            effects=Effects(reserved=hold.amount),
            **fields,
        )
        return current.then(Change(account, (entry,), (), (hold,)))

    @_stamped
    def settle_hold(
        self, policy: MonthlyResetPolicy, now: datetime, hold_id: str, actual: int | None
    ) -> Change:
        """Commit ``actual`` tokens of a hold (spending them, releasing the rest) or,
        with ``actual=None``, release it whole. The hold must still be held."""
        current = self.as_of(policy, now)
        before = current.account
        hold = next(h for h in before.holds if h.id == hold_id)
        released = attrs.evolve(
            before,
            holds=tuple(h for h in before.holds if h.id != hold_id),
            reserved_tokens=before.reserved_tokens - hold.amount,
            updated_at=now,
        )
        fields: dict[str, Any] = {"feature": hold.feature, "reference": hold.id}
        if actual is None:
            entry = self._entry(
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
        spent = released._spend(
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

    @_stamped
    def refund(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        spent: Transaction,
        earlier_refunds: Iterable[Transaction],
        amount: int,
        *,
        credit_grant_id: str,
        reason: str | None,
        idempotency_key: str | None,
    ) -> Change:
        """Give back ``amount`` of the successful deduction ``spent``.

        A refund walks the deduction's sources in a fixed order (its usage,
        then each grant it drew on), skipping what earlier refunds already
        returned. Tokens go back where they came from when that still exists
        in the current period: usage of this period, a grant that is still
        live. Anything else (usage of an ended period, an expired or spent
        grant) is credited as a new grant that never expires, because the
        ended period's allowance can no longer be spent.
        """
        current = self.as_of(policy, now)
        account = current.account
        already = sum(refund.amount for refund in earlier_refunds)
        sources = [("usage", spent.effects.usage), *((g, -a) for g, a in spent.effects.grants)]
        in_this_period = spent.created_at >= account.last_monthly_reset
        live = {grant.id: grant for grant in account.grants if grant.is_live(now)}
        usage_back = 0
        grants_back: dict[str, int] = {}
        credit = 0
        to_skip, to_return = already, amount
        for source, size in sources:
            skipped = min(to_skip, size)
            to_skip -= skipped
            part = min(to_return, size - skipped)
            to_return -= part
            if not part:
                continue
            if source == "usage" and in_this_period:
                usage_back += part
            elif source in live:
                grants_back[source] = part
            else:
                credit += part
        returned_grants = [
            attrs.evolve(live[g], remaining=live[g].remaining + part)
            for g, part in grants_back.items()
        ]
        new_grants = (
            [
                Grant(
                    credit_grant_id,
                    self.user_id,
                    credit,
                    credit,
                    now,
                    None,
                    f"refund of #{spent.id}",
                )
            ]
            if credit
            else []
        )
        changed = {grant.id: grant for grant in returned_grants}
        account = attrs.evolve(
            account,
            monthly_tokens_used=account.monthly_tokens_used - usage_back,
            grants=(
                *(changed.get(g.id, g) for g in account.grants),
                *new_grants,
            ),
            grant_balance=account.grant_balance + sum(grants_back.values()) + credit,
            updated_at=now,
        )
        if credit:
            grants_back[credit_grant_id] = credit
        entry = self._entry(
            account,
            OperationType.REFUND,
            amount,
            now,
            feature=spent.feature,
            reference=str(spent.id),
            idempotency_key=idempotency_key,
            effects=Effects(usage=-usage_back, grants=grants_back),
            operation_context={"reason": reason},
        )
        return current.then(Change(account, (entry,), (*returned_grants, *new_grants)))

    @_stamped
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
        entry = self._entry(
            account, OperationType.LIMIT_CHANGE, monthly_limit, now, operation_context=context
        )
        return current.then(Change(account, (entry,)))

    def _entry(
        self,
        after: TokenAccount,
        operation_type: OperationType,
        amount: int,
        now: datetime,
        **fields: Any,
    ) -> Transaction:
        return Transaction(
            user_id=self.user_id,
            operation_type=operation_type,
            amount=amount,
            created_at=now,
            balance_after=after.monthly_remaining,
            **fields,
        )


@overload
def _iso(instant: datetime) -> str: ...
@overload
def _iso(instant: None) -> None: ...
def _iso(instant: datetime | None) -> str | None:
    """Fixed-width UTC text, which SQL can produce too (``to_char``, ``strftime``)."""
    if instant is None:
        return None
    return instant.astimezone(timezone.utc).isoformat(timespec="microseconds")
