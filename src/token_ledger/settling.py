"""What the passage of time does to an account: the reset of an ended period, with its
rollover, and the write-off of expired grants and holds.

Applied lazily: the first write after a boundary settles the account, and every
read shows the account as that write will leave it
(:meth:`~token_ledger.account.TokenAccount.as_of`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from token_ledger.change import Change, context_instant, entry_of
from token_ledger.grants import Grant, ReservationStatus
from token_ledger.transactions import Effects, OperationType
from token_ledger.windows import SpendingWindow, roll

if TYPE_CHECKING:
    from token_ledger.account import TokenAccount
    from token_ledger.policy import MonthlyResetPolicy

ROLLOVER_REASON = "rollover"


def rollover_grant_id(user_id: str, period_start: datetime) -> str:
    """The id of the grant a period starting at ``period_start`` rolls over into.

    Derived, not random: however often a reset of the same boundary is computed
    (a read shows it, a write stores it), it names the same grant. It is the first 32
    hex digits of the SHA-256 of ``rollover <period_start> <user_id>`` in UTF-8, the
    instant as entries' contexts write it (fixed width, so the text names one pair):
    the optional PostgreSQL SQL computes the same id with built-ins
    (``token_ledger_rollover_grant_id``).
    """
    text = f"rollover {context_instant(period_start)} {user_id}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def reset(account: TokenAccount, policy: MonthlyResetPolicy, now: datetime) -> Change:
    """Start the period containing ``now`` if it is a new one: exactly one ``reset`` entry
    however many periods were skipped.

    With a ``rollover_cap``, what was left of the last ended period's allowance, up to
    the cap, carries into the new period as a grant that expires when it ends, part of
    the reset entry's effects. The last ended period is the stored one when the reset
    comes right after it; when whole periods were skipped, it is the last of them, in
    which nothing was spent: its whole allowance (up to the cap) rolls over, as an
    eager reset at every boundary would have left it. Nothing rolls over twice: an
    earlier rollover grant expires at the boundary like any other.
    """
    period = account.period_at(policy, now)
    if period.start <= account.last_monthly_reset:
        return Change(account)
    used = account.monthly_tokens_used
    carried = _rollover(account, policy, period.start, period.end)
    context: dict[str, object] = {
        "previous_used": used,
        "previous_period_start": context_instant(account.last_monthly_reset),
        "period_start": context_instant(period.start),
    }
    effects = Effects(usage=-used)
    new_grants: tuple[Grant, ...] = ()
    if carried is not None:
        context["rollover"] = carried.amount
        effects = Effects(usage=-used, grants={carried.id: carried.amount})
        new_grants = (carried,)
    after = attrs.evolve(
        account,
        monthly_tokens_used=0,
        last_monthly_reset=period.start,
        grants=(*account.grants, *new_grants),
        grant_balance=account.grant_balance + sum(g.amount for g in new_grants),
        updated_at=now,
    )
    entry = entry_of(
        account,
        after,
        OperationType.RESET,
        used,
        now,
        effects=effects,
        operation_context=context,
    )
    return Change(after, (entry,), new_grants)


def _rollover(
    account: TokenAccount, policy: MonthlyResetPolicy, start: datetime, end: datetime
) -> Grant | None:
    if account.rollover_cap <= 0:
        return None
    stored = account.period_at(policy, account.last_monthly_reset)
    left = account.monthly_remaining if stored.end >= start else account.monthly_limit
    amount = min(left, account.rollover_cap)
    if amount <= 0:
        return None
    grant_id = rollover_grant_id(account.user_id, start)
    return Grant(grant_id, account.user_id, amount, amount, start, end, ROLLOVER_REASON)


def expire(account: TokenAccount, now: datetime) -> Change:
    """Write off the grants past their expiry and release the holds past theirs."""
    expired_grants = [g for g in account.grants if not g.is_live(now)]
    expired_holds = [h for h in account.holds if not h.is_held(now)]
    if not expired_grants and not expired_holds:
        return Change(account)
    written_off = sum(grant.remaining for grant in expired_grants)
    released = sum(hold.amount for hold in expired_holds)
    after = attrs.evolve(
        account,
        grants=tuple(g for g in account.grants if g.is_live(now)),
        holds=tuple(h for h in account.holds if h.is_held(now)),
        grant_balance=account.grant_balance - written_off,
        reserved_tokens=account.reserved_tokens - released,
        updated_at=now,
    )
    entries = [
        entry_of(
            account,
            after,
            OperationType.EXPIRE,
            grant.remaining,
            now,
            reference=grant.id,
            effects=Effects(grants={grant.id: -grant.remaining}),
            operation_context={"expires_at": context_instant(grant.expires_at)},
        )
        for grant in expired_grants
    ] + [
        entry_of(
            account,
            after,
            OperationType.RELEASE,
            hold.amount,
            now,
            feature=hold.feature,
            reference=hold.id,
            effects=Effects(reserved=-hold.amount),
            operation_context={
                "reason": "expired",
                "expires_at": context_instant(hold.expires_at),
            },
        )
        for hold in expired_holds
    ]
    return Change(
        after,
        tuple(entries),
        tuple(attrs.evolve(grant, remaining=0) for grant in expired_grants),
        tuple(attrs.evolve(hold, status=ReservationStatus.EXPIRED) for hold in expired_holds),
    )


def roll_windows(account: TokenAccount, policy: MonthlyResetPolicy, now: datetime) -> Change:
    """Start again each window that has ended; no entry records it, as nothing was spent."""
    if not account.windows:
        return Change(account)
    windows = roll_windows_of(account.windows, account, policy, now)
    if windows == account.windows:
        return Change(account)
    return Change(attrs.evolve(account, windows=windows, updated_at=now))


def roll_windows_of(
    windows: tuple[SpendingWindow, ...],
    account: TokenAccount,
    policy: MonthlyResetPolicy,
    now: datetime,
) -> tuple[SpendingWindow, ...]:
    return roll(windows, now, account.calendar_zone(policy))
