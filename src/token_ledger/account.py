"""A user's allowance: one row of the seed's ``user_tokens`` table, with its grants and holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from token_ledger import settling
from token_ledger._validation import positive_int
from token_ledger.change import Change, context_instant, entry_of, stamped
from token_ledger.errors import GrantVoided, ReservationsHeld
from token_ledger.grants import Grant, Reservation
from token_ledger.policy import MonthlyResetPolicy, Period
from token_ledger.spending import spend
from token_ledger.thresholds import Threshold
from token_ledger.transactions import Effects, OperationType
from token_ledger.windows import SpendingWindow, with_caps
from token_ledger.windows import in_zone as windows_in_zone

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
    time_zone: str | None = None
    """The account's own IANA zone for its calendar; ``None`` is the policy's."""
    rollover_cap: int = 0
    """How much of a period's unspent allowance carries into the next (see
    :func:`~token_ledger.settling.reset`)."""
    thresholds: tuple[Threshold, ...] | None = None
    """The account's own notification thresholds; ``None``: the ledger's defaults."""
    organisation_id: str | None = None
    """The account whose budget this one spends from too (:mod:`token_ledger.organisations`)."""
    windows: tuple[SpendingWindow, ...] = ()
    """Caps for hours, days or weeks inside the period (:mod:`token_ledger.windows`)."""

    @classmethod
    def open(
        cls,
        user_id: str,
        monthly_limit: int,
        policy: MonthlyResetPolicy,
        now: datetime,
        reset_anchor: datetime | None = None,
        *,
        time_zone: str | None = None,
        rollover_cap: int = 0,
        organisation_id: str | None = None,
        window_caps: dict[str, int] | None = None,
    ) -> TokenAccount:
        """A new account whose first period is the one containing ``now``."""
        return cls(
            user_id=user_id,
            monthly_limit=monthly_limit,
            monthly_tokens_used=0,
            last_monthly_reset=policy.period(now, reset_anchor, time_zone).start,
            created_at=now,
            updated_at=now,
            reset_anchor=reset_anchor,
            time_zone=time_zone,
            rollover_cap=rollover_cap,
            organisation_id=organisation_id,
            windows=with_caps((), window_caps or {}, now),
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
        """What one more deduction may take: allowance, grants and overage, less holds,
        and no more than any window has left (of an account settled at the instant)."""
        total = self.monthly_remaining + self.grant_balance + self.overage_remaining
        room = total - self.reserved_tokens
        for window in self.windows:
            room = min(room, window.remaining(self.reserved_tokens))
        return max(0, room)

    def calendar_zone(self, policy: MonthlyResetPolicy) -> str:
        """The zone its periods and windows are counted in."""
        return self.time_zone or policy.timezone

    def current_period(self, policy: MonthlyResetPolicy, now: datetime) -> Period:
        """The period at ``now``, which never starts before the stored one.

        A clock that goes backwards keeps the stored period rather than moving
        it back, so it can never cause a second reset of the same crossing.
        """
        period = self.period_at(policy, now)
        if period.start < self.last_monthly_reset:
            return self.period_at(policy, self.last_monthly_reset)
        return period

    def period_at(self, policy: MonthlyResetPolicy, at: datetime) -> Period:
        """The period of this account (its anchor, its zone) that contains ``at``."""
        return policy.period(at, self.reset_anchor, self.time_zone)

    @property
    def follows_the_ledger_calendar(self) -> bool:
        """Whether its periods are the policy's calendar months: no anchor, no zone of its
        own. Only such accounts can be reset or deducted from by the SQL shortcuts."""
        return self.reset_anchor is None and self.time_zone is None

    def is_stale(self, policy: MonthlyResetPolicy, now: datetime) -> bool:
        """Whether a reset is pending: the stored usage belongs to an ended period."""
        return self.period_at(policy, now).start > self.last_monthly_reset

    # the passage of time

    @stamped
    def as_of(self, policy: MonthlyResetPolicy, now: datetime) -> Change:
        """The account as it is at ``now``: reset if a period boundary was crossed
        (exactly one ``reset`` entry however many periods were skipped), expired
        grants written off, expired holds released and ended windows started again."""
        reset = settling.reset(self, policy, now)
        expired = reset.then(settling.expire(reset.account, now))
        return expired.then(settling.roll_windows(expired.account, policy, now))

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
            operation_context=_grant_context(grant),
        )
        return current.then(Change(account, (entry,), (grant,)))

    @stamped
    def with_limits(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        monthly_limit: int,
        overage_limit: int,
        rollover_cap: int | None = None,
    ) -> Change:
        """Settle, then change the limits; usage is kept, as on a plan change."""
        current = self.as_of(policy, now)
        before = current.account
        rollover = before.rollover_cap if rollover_cap is None else rollover_cap
        account = attrs.evolve(
            before,
            monthly_limit=monthly_limit,
            overage_limit=overage_limit,
            rollover_cap=rollover,
            updated_at=now,
        )
        context: dict[str, Any] = {"previous_limit": before.monthly_limit}
        if overage_limit != before.overage_limit:
            context["previous_overage_limit"] = before.overage_limit
            context["overage_limit"] = overage_limit
        if rollover != before.rollover_cap:
            context["previous_rollover_cap"] = before.rollover_cap
            context["rollover_cap"] = rollover
        entry = entry_of(
            self, account, OperationType.LIMIT_CHANGE, monthly_limit, now, operation_context=context
        )
        return current.then(Change(account, (entry,)))

    @stamped
    def with_thresholds(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        thresholds: tuple[Threshold, ...] | None,
    ) -> Change:
        """Settle, then set the account's own thresholds (``None``: the ledger's defaults).

        No entry records it and no threshold fires: only spending crosses one.
        """
        current = self.as_of(policy, now)
        if current.account.thresholds == thresholds:
            return current
        account = attrs.evolve(current.account, thresholds=thresholds, updated_at=now)
        return current.then(Change(account))

    @stamped
    def in_time_zone(
        self, policy: MonthlyResetPolicy, now: datetime, time_zone: str | None
    ) -> Change:
        """Settle, then count the calendar in ``time_zone`` (``None``: the policy's).

        The period in progress keeps its usage and ends at the new zone's next
        boundary: its start moves to where the new zone's current period starts, so
        a change of zone never resets an allowance, nor gives a second one. Windows
        likewise keep what they used until the new zone's next boundary.
        """
        current = self.as_of(policy, now)
        before = current.account
        moved = attrs.evolve(before, time_zone=time_zone, updated_at=now)
        account = attrs.evolve(
            moved,
            # never before the stored period, which a write with a later clock may have begun
            last_monthly_reset=moved.current_period(policy, now).start,
            windows=windows_in_zone(before.windows, now, moved.calendar_zone(policy)),
        )
        return current.then(
            _setting_changed(
                self, account, now, previous_time_zone=before.time_zone, time_zone=time_zone
            )
        )

    @stamped
    def with_window_caps(
        self, policy: MonthlyResetPolicy, now: datetime, caps: dict[str, int]
    ) -> Change:
        """Settle, then cap the windows in ``caps`` (the others are no longer capped).

        A window that stays keeps what it has used; a new one counts from now.
        """
        current = self.as_of(policy, now)
        before = current.account
        windows = with_caps(before.windows, caps, now)
        if windows == before.windows:
            return current
        account = attrs.evolve(before, windows=windows, updated_at=now)
        return current.then(
            _setting_changed(
                self,
                account,
                now,
                previous_window_caps={w.unit: w.cap for w in before.windows},
                window_caps=dict(caps),
            )
        )

    @stamped
    def in_organisation(
        self, policy: MonthlyResetPolicy, now: datetime, organisation_id: str | None
    ) -> Change:
        """Settle, then spend from ``organisation_id``'s budget from now on (``None``: from
        no organisation's). What was spent stays spent where it was: the earlier
        organisation keeps its usage and takes its refunds. Refused while the account
        holds reservations, which its organisations hold a share of
        (:class:`~token_ledger.errors.ReservationsHeld`)."""
        current = self.as_of(policy, now)
        before = current.account
        if before.holds:
            raise ReservationsHeld(self.user_id, len(before.holds))
        account = attrs.evolve(before, organisation_id=organisation_id, updated_at=now)
        return current.then(
            _setting_changed(
                self,
                account,
                now,
                previous_organisation=before.organisation_id,
                organisation=organisation_id,
            )
        )

    @stamped
    def void_grant(
        self,
        policy: MonthlyResetPolicy,
        now: datetime,
        grant: Grant,
        *,
        reason: str | None,
        idempotency_key: str | None,
    ) -> Change:
        """Settle, then void ``grant`` (its stored row): what is left of it leaves every
        balance, and it is never spent or refunded into again (:class:`GrantVoided`
        when it was voided already). A grant that expired or was spent up is voided
        with nothing left to remove."""
        if grant.voided_at is not None:
            raise GrantVoided(grant.id)
        current = self.as_of(policy, now)
        before = current.account
        live = next((g for g in before.grants if g.id == grant.id), None)
        left = 0 if live is None else live.remaining
        account = attrs.evolve(
            before,
            grants=tuple(g for g in before.grants if g.id != grant.id),
            grant_balance=before.grant_balance - left,
            updated_at=now,
        )
        entry = entry_of(
            self,
            account,
            OperationType.VOID,
            left,
            now,
            reference=grant.id,
            idempotency_key=idempotency_key,
            effects=Effects(grants={grant.id: -left}),
            operation_context={"reason": reason},
        )
        voided = attrs.evolve(live or grant, remaining=0, voided_at=now)
        return current.then(Change(account, (entry,), (voided,)))


def _setting_changed(
    stored: TokenAccount, account: TokenAccount, now: datetime, **context: Any
) -> Change:
    """The ``limit_change`` entry of a change of one of an account's settings: the limit
    it had (``previous_limit``), then what changed, as ``context`` names it."""
    entry = entry_of(
        stored,
        account,
        OperationType.LIMIT_CHANGE,
        account.monthly_limit,
        now,
        operation_context={"previous_limit": account.monthly_limit, **context},
    )
    return Change(account, (entry,))


def _grant_context(grant: Grant) -> dict[str, Any]:
    context: dict[str, Any] = {
        "reason": grant.reason,
        "expires_at": context_instant(grant.expires_at),
    }
    if grant.priority:
        context["priority"] = grant.priority
    return context
