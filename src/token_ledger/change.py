"""What every operation on an account returns, and the rules every such result obeys.

A :class:`Change` is the account as an operation leaves it with the entries
that record why. :func:`stamped` wraps each operation of
:class:`~token_ledger.account.TokenAccount`, so the stamp of ``updated_at`` and
the refusal of impossible states are applied in one place to all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, overload

import attrs

from token_ledger._validation import INT64_MAX
from token_ledger.errors import InvalidAmount, LedgerInvariantError
from token_ledger.grants import Grant, Reservation
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec

    from token_ledger.account import TokenAccount
    from token_ledger.policy import MonthlyResetPolicy

    P = ParamSpec("P")
    AccountMethod = Callable[Concatenate["TokenAccount", MonthlyResetPolicy, datetime, P], "Change"]

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

    @property
    def has_reset(self) -> bool:
        """Whether the change starts a new period."""
        return any(entry.operation_type is OperationType.RESET for entry in self.entries)

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


def stamped(operation: AccountMethod[P]) -> AccountMethod[P]:
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
    def stamp(
        self: TokenAccount,
        policy: MonthlyResetPolicy,
        now: datetime,
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Change:
        change = operation(self, policy, now, *args, **kwargs)
        _refuse_impossible(self, change)
        if change.account is self or change.account == self:
            return change
        stamp = now - _MICROSECOND if now == self.updated_at else now
        if change.account.updated_at == stamp:  # the usual case: the operation stamped ``now``
            return change
        return attrs.evolve(change, account=attrs.evolve(change.account, updated_at=stamp))

    return stamp


def _refuse_impossible(before: TokenAccount, change: Change) -> None:
    """The states no operation may leave an account in, checked for every engine alike.

    Every stored figure is a signed 64-bit integer on every engine. Inputs are
    checked one by one, but sums of them are not: a grant of ``2**63 - 1`` on
    top of a live one, or usage within a limit plus an overage that add up
    past it. Refused with :class:`InvalidAmount` (SQLite would raise
    ``OverflowError``, PostgreSQL "bigint out of range", memory store the sum).

    Usage may grow up to the limit plus the overage limit; above that (a limit
    lowered below what was used) it may stay or fall, only within the stored
    period, which only a change of the account's zone moves without a reset. The
    spending rules never break this; a change that did would be a bug, refused here
    rather than stored (PostgreSQL's UPDATE guards it too).
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
    over = account.monthly_tokens_used - account.monthly_limit > account.overage_limit
    kept = account.monthly_tokens_used <= before.monthly_tokens_used and (
        account.last_monthly_reset == before.last_monthly_reset
        or account.time_zone != before.time_zone
    )
    if over and not kept:
        raise LedgerInvariantError(
            f"refused to store {account.user_id!r} with usage {account.monthly_tokens_used}"
            f" beyond its limit {account.monthly_limit} and overage {account.overage_limit}"
        )


def entry_of(
    before: TokenAccount,
    after: TokenAccount,
    operation_type: OperationType,
    amount: int,
    now: datetime,
    **fields: Any,
) -> Transaction:
    """The ledger entry of an operation that took ``before`` to ``after``."""
    return Transaction(
        user_id=before.user_id,
        operation_type=operation_type,
        amount=amount,
        created_at=now,
        balance_after=after.monthly_remaining,
        **fields,
    )


@overload
def context_instant(instant: datetime) -> str: ...
@overload
def context_instant(instant: None) -> None: ...
def context_instant(instant: datetime | None) -> str | None:
    """An instant as entries' contexts hold it: fixed-width UTC text, which SQL can
    produce too (``to_char``, ``strftime``)."""
    if instant is None:
        return None
    return instant.astimezone(timezone.utc).isoformat(timespec="microseconds")
