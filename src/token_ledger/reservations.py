"""Holds: what reserving, committing and releasing do to an account.

Pure functions of an account, like :mod:`token_ledger.spending`; the rules of a hold
(it must still be held, and hold at least what is committed) live here once.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from token_ledger.change import Change, context_instant, entry_of, stamped
from token_ledger.errors import InvalidAmount, ReservationClosed
from token_ledger.grants import Reservation, ReservationStatus
from token_ledger.spending import spend
from token_ledger.transactions import Effects, OperationType

if TYPE_CHECKING:
    from token_ledger.account import TokenAccount
    from token_ledger.policy import MonthlyResetPolicy


@stamped
def reserve(
    stored: TokenAccount,
    policy: MonthlyResetPolicy,
    now: datetime,
    hold: Reservation,
    *,
    idempotency_key: str | None,
) -> Change:
    """Hold ``hold.amount`` if it can be spent now, or record a refusal."""
    current = stored.as_of(policy, now)
    before = current.account
    fields: dict[str, Any] = {
        "feature": hold.feature,
        "reference": hold.id,
        "idempotency_key": idempotency_key,
        "operation_context": {"expires_at": context_instant(hold.expires_at)},
    }
    if hold.amount > before.spendable:
        refused = entry_of(
            stored, before, OperationType.RESERVE, hold.amount, now, success=False, **fields
        )
        return current.then(Change(before, (refused,)))
    account = attrs.evolve(
        before,
        holds=(*before.holds, hold),
        reserved_tokens=before.reserved_tokens + hold.amount,
        updated_at=now,
    )
    entry = entry_of(
        stored,
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
    stored: TokenAccount,
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
    hold = next((h for h in stored.holds if h.id == reservation.id), None)
    if hold is None or not hold.is_held(now):
        status = ReservationStatus.EXPIRED if hold is not None else reservation.status
        raise ReservationClosed(reservation.id, str(status))
    if actual is not None and actual > hold.amount:
        raise InvalidAmount(
            f"cannot commit {actual} tokens: reservation {hold.id!r} holds {hold.amount}"
        )
    current = stored.as_of(policy, now)
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
            stored,
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
def commit_unheld(
    stored: TokenAccount,
    policy: MonthlyResetPolicy,
    now: datetime,
    hold: Reservation,
    actual: int,
    *,
    reserved: int,
) -> Change:
    """Commit ``actual`` tokens of a hold this account no longer holds (a write with a later
    clock released it): spent from its budget as a deduction would be, or refused."""
    current = stored.as_of(policy, now)
    spent = spend(
        current.account,
        OperationType.COMMIT,
        actual,
        now,
        feature=hold.feature,
        reference=hold.id,
        operation_context={"reserved": reserved},
    )
    return current.then(spent)
