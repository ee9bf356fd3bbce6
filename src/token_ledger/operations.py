"""Every write of the ledger, written once, performing no I/O itself.

An operation is a generator: it yields each call it needs of a unit of work
(:class:`Call`: "load this account", "append these entries"), is sent the
answer, lets the domain decide, and returns its result. It never touches a
connection, so the same operation runs unchanged under any runner: the
synchronous facade's (:func:`run`), an asyncio one that awaits each call, or
a transaction the caller owns. This is the sans-I/O shape of h11: the
protocol is written once, the shells that do the I/O are thin.

The checks of the caller's arguments happen before an operation is made;
the rules that need stored state (a reservation still held, what is left
to refund, an idempotency key used before) are the domain's, applied here.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs

from token_ledger import organisations, refunds, reservations
from token_ledger.account import Change, TokenAccount
from token_ledger.change import context_instant
from token_ledger.errors import (
    AccountExists,
    AccountNotFound,
    GrantNotFound,
    IdempotencyConflict,
    InvalidInput,
    ReservationNotFound,
    TransactionNotFound,
)
from token_ledger.grants import Grant, Reservation
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.repository import StaleCutoffs, TokenRepository, UnitOfWork
from token_ledger.thresholds import Notification, Thresholds, crossed, in_effect
from token_ledger.transactions import Effects, OperationType, Transaction, replay

T = TypeVar("T")


@attrs.frozen
class Call:
    """One call of a :class:`~token_ledger.repository.UnitOfWork` method, by name."""

    method: str
    arguments: tuple[Any, ...]


Operation = Generator[Call, Any, T]
"""Yields calls, is sent each call's answer, returns ``T``."""


def run(operation: Operation[T], target: UnitOfWork | TokenRepository) -> T:
    """Run ``operation`` against ``target``, one call at a time, in this thread.

    ``target`` is the unit of work a write's calls name, or the repository a
    read's calls name (:mod:`token_ledger.reads`).
    """
    answer: Any = None
    while True:
        try:
            call = operation.send(answer)
        except StopIteration as finished:
            result: T = finished.value
            return result
        answer = getattr(target, call.method)(*call.arguments)


async def run_async(operation: Operation[T], target: Any) -> T:
    """Run ``operation`` against ``target`` whose methods are coroutines, in the event loop.

    The asyncio twin of :func:`run`: the operation is the same generator; only
    how each call's answer is obtained differs.
    """
    answer: Any = None
    while True:
        try:
            call = operation.send(answer)
        except StopIteration as finished:
            result: T = finished.value
            return result
        answer = await getattr(target, call.method)(*call.arguments)


@attrs.frozen
class Spent:
    """The entry that records a spending operation, and what may still be spent after it."""

    entry: Transaction
    remaining: int
    reservation: Reservation | None = None


@attrs.frozen
class DirectDeduction:
    """The common deduction, decided before its account is read.

    Most deductions find their account as most accounts are: without a
    ``reset_anchor``, in the calendar period that contains ``now`` (its
    ``last_monthly_reset`` is :attr:`period_start`), without live grants or held
    reservations (``grant_balance = 0 AND reserved_tokens = 0``), with room for
    ``amount`` in the allowance (``amount <= monthly_limit - monthly_tokens_used``)
    and, with an idempotency key, no entry stored under it yet. For such an account
    the domain's deduction adds ``amount`` to the usage, stamps ``updated_at`` with
    ``now`` (or :attr:`earlier` when the stored ``updated_at`` is ``now``, as
    :func:`token_ledger.change.stamped` does) and writes one successful entry whose
    ``balance_after`` is the allowance left and whose effects are ``{"usage": amount}``.

    A member whose organisation is a root (the path of two accounts) and is such an
    account too gets the same on both (:func:`deduct` through
    :func:`~token_ledger.organisations.shared`): the member's entry first, then the
    organisation's share, the same but without the key, its ``operation_context``
    :attr:`share_context` and its ``member_entry_id`` the member's entry's id.

    A store that can test all of this and write the rows in one guarded transaction
    offers ``deduct_directly(deduction)``; it answers :meth:`spent` for the entry it
    wrote, or ``None`` when the guard matched nothing (or it lost a race), and
    :func:`deduct` then runs as usual. Either way the rows are the same.
    """

    user_id: str
    amount: int
    feature: str | None
    context: dict[str, Any]
    idempotency_key: str | None
    now: datetime
    period_start: datetime
    """The start of the calendar period containing ``now``."""
    thresholds: Thresholds = ()
    """The ledger's default notification thresholds. A store applies the deduction only
    where it crosses none of those in effect for each account it writes (these, for an
    account whose own are not set; an account with thresholds of its own it may leave to
    :func:`deduct`), so that the notification is recorded."""

    @property
    def earlier(self) -> datetime:
        """The ``updated_at`` to write when the stored one is ``now`` already."""
        return self.now - _EARLIER

    @property
    def share_context(self) -> dict[str, Any]:
        """The ``operation_context`` of an organisation's share of the deduction."""
        return organisations.share_context({}, self.user_id)

    def spent(
        self,
        entry_id: int,
        balance_after: int,
        overage_limit: int,
        organisation: tuple[int, int] | None = None,
    ) -> Spent:
        """The result of the deduction a store applied: the entry it stored as ``entry_id``.

        What is still spendable is the allowance left plus the whole overage limit,
        since the deduction drew on neither grants nor overage; for a member, the
        least of that and its organisation's (``organisation``: the share's
        ``balance_after`` and the organisation's overage limit), as
        :func:`~token_ledger.organisations.spendable` has it.
        """
        entry = Transaction(
            self.user_id,
            OperationType.DEDUCT,
            self.amount,
            self.now,
            balance_after,
            True,
            self.feature,
            self.context,
            self.idempotency_key,
            entry_id,
            Effects(usage=self.amount),
        )
        remaining = balance_after + overage_limit
        if organisation is not None:
            share_balance, share_overage = organisation
            remaining = min(remaining, share_balance + share_overage)
        return Spent(entry, remaining)


_EARLIER = timedelta(microseconds=1)


def single(call: Call) -> Operation[Any]:
    """An operation of one call, answering what the call answers."""
    answer = yield call
    return answer


# steps shared by the operations


def _load(user_id: str) -> Operation[TokenAccount]:
    account: TokenAccount | None = yield Call("load_account", (user_id,))
    if account is None:
        raise AccountNotFound(user_id)
    return account


def _prior(
    key: str | None,
    operation_type: OperationType,
    user_id: str,
    amount: int | None,
    feature: str | None = None,
) -> Operation[Transaction | None]:
    """The entry an earlier call with the same idempotency key stored, if any."""
    if key is None:
        return None
    prior: Transaction | None = yield Call("find_by_idempotency_key", (key,))
    return None if prior is None else replay(prior, operation_type, user_id, amount, feature)


def _store(before: TokenAccount, change: Change) -> Operation[list[Transaction]]:
    """Write what ``change`` changed, and the entries, which come back with their ids."""
    if change.account != before:
        yield Call("save_accounts", ([change.account],))
    if change.grants:
        yield Call("save_grants", (change.grants,))
    if change.reservations:
        yield Call("save_reservations", (change.reservations,))
    stored: list[Transaction] = yield Call("append_transactions", (change.entries,))
    return stored


def _voided_sources(spent: Transaction, account: TokenAccount) -> Operation[list[str]]:
    """The grants ``spent`` drew on that were voided since: only those not live are read."""
    live = {grant.id for grant in account.grants}
    voided = []
    for grant_id, _ in spent.effects.grants:
        if grant_id in live:
            continue
        grant: Grant | None = yield Call("find_grant", (grant_id,))
        if grant is not None and grant.voided_at is not None:
            voided.append(grant_id)
    return voided


def _crossings(
    policy: MonthlyResetPolicy,
    now: datetime,
    defaults: Thresholds,
    before: TokenAccount,
    change: Change,
    entry_id: int | None,
) -> list[Notification]:
    """A notification for each threshold ``change`` crossed, naming entry ``entry_id``."""
    after = change.account
    thresholds = in_effect(after, defaults)
    if not thresholds or not any(t.reached(after) for t in thresholds):
        return []  # the usual write: nothing reached, no need to settle again
    settled = before.as_of(policy, now).account
    return [
        Notification.of(threshold, after, now, entry_id)
        for threshold in crossed(thresholds, settled, after)
    ]


def _store_noting(
    policy: MonthlyResetPolicy,
    now: datetime,
    defaults: Thresholds,
    before: TokenAccount,
    change: Change,
) -> Operation[list[Transaction]]:
    """:func:`_store`, and a notification for each threshold the change crossed, recorded
    in the same unit of work and naming the change's last entry."""
    stored = yield from _store(before, change)
    notes = _crossings(policy, now, defaults, before, change, stored[-1].id if stored else None)
    if notes:
        yield Call("append_notifications", (notes,))
    return stored


def _load_path(user_id: str) -> Operation[list[TokenAccount]]:
    """The account and the organisations above it, root first, locked in that order."""
    path: list[TokenAccount] = yield Call("load_path", (user_id,))
    if not path:
        raise AccountNotFound(user_id)
    organisations.check_path(path)
    return path


def _store_path(
    policy: MonthlyResetPolicy,
    now: datetime,
    defaults: Thresholds,
    path: Sequence[TokenAccount],
    changes: Sequence[Change],
) -> Operation[list[Transaction]]:
    """:func:`_store_noting` for every account on a path: the member's change last, each
    organisation's share linked to the member's entry. The member's entries come back."""
    if len(path) == 1:
        return (yield from _store_noting(policy, now, defaults, path[0], changes[0]))
    accounts = [c.account for before, c in zip(path, changes, strict=True) if c.account != before]
    if accounts:
        yield Call("save_accounts", (accounts,))
    grants = [grant for change in changes for grant in change.grants]
    if grants:
        yield Call("save_grants", (grants,))
    holds = [hold for change in changes for hold in change.reservations]
    if holds:
        yield Call("save_reservations", (holds,))
    member = changes[-1]
    stored: list[Transaction] = yield Call("append_transactions", (member.entries,))
    link = stored[-1].id if stored else None
    notes = _crossings(policy, now, defaults, path[-1], member, link)
    for before, change in zip(path[:-1], changes[:-1], strict=False):
        if not change.entries:
            continue
        shares: list[Transaction] = yield Call(
            "append_transactions", (organisations.linked(change.entries, link),)
        )
        notes += _crossings(policy, now, defaults, before, change, shares[-1].id)
    if notes:
        yield Call("append_notifications", (notes,))
    return stored


# the operations


def _lock_organisation(account: TokenAccount) -> Operation[None]:
    """Lock the path of the organisation a new account joins, which must exist."""
    if account.organisation_id is None:
        return
    above = yield from _load_path(account.organisation_id)
    organisations.check_move(account.user_id, above, 0)


def open_account(account: TokenAccount) -> Operation[TokenAccount]:
    yield from _lock_organisation(account)
    inserted = yield Call("insert_account", (account,))
    if not inserted:
        raise AccountExists(account.user_id)
    return account


def ensure_account(account: TokenAccount) -> Operation[TokenAccount]:
    yield from _lock_organisation(account)
    inserted = yield Call("insert_account", (account,))
    if inserted:
        return account
    return (yield from _load(account.user_id))


def move_to_organisation(
    policy: MonthlyResetPolicy, now: datetime, user_id: str, organisation_id: str | None
) -> Operation[TokenAccount]:
    """Make ``user_id`` a member of ``organisation_id`` (``None``: of none) from now on.

    The new organisation's path is locked first, root first, then the member: the
    order every writer on that path takes. A move to where the account is already
    changes nothing, so it is not refused for the account's holds.
    """
    if organisation_id is not None:
        above = yield from _load_path(organisation_id)
    account = yield from _load(user_id)
    if organisation_id is not None:
        # read once the member is locked: who joins it meanwhile waits for that lock
        height = yield from _height_below(user_id)
        organisations.check_move(user_id, above, height)
    if account.organisation_id == organisation_id:
        return account.as_of(policy, now).account
    change = account.in_organisation(policy, now, organisation_id)
    yield from _store(account, change)
    return change.account


def _height_below(user_id: str) -> Operation[int]:
    """How many levels of members the account has under it (0: none)."""
    height = 0
    level = [user_id]
    while level:
        below: list[str] = []
        for member in level:
            below += yield Call("members_of", (member,))
        if below:
            height += 1
            if height >= organisations.MAX_DEPTH:
                return height
        level = below
    return height


def set_window_caps(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: str,
    caps: dict[str, int],
    thresholds: Thresholds = (),
) -> Operation[TokenAccount]:
    """Cap the windows in ``caps``: a cap lowered to what its window used leaves nothing,
    a crossing notified like a lowered limit's."""
    account = yield from _load(user_id)
    change = account.with_window_caps(policy, now, caps)
    yield from _store_noting(policy, now, thresholds, account, change)
    return change.account


def deduct(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: str,
    amount: int,
    *,
    feature: str | None,
    context: Mapping[str, Any],
    idempotency_key: str | None,
    thresholds: Thresholds = (),
) -> Operation[Spent]:
    path = yield from _load_path(user_id)
    account = path[-1]
    prior = yield from _prior(idempotency_key, OperationType.DEDUCT, user_id, amount, feature)
    if prior is not None:
        return Spent(prior, organisations.replayed_remaining(prior))
    change = account.deduct(
        policy,
        now,
        amount,
        feature=feature,
        context=dict(context),
        idempotency_key=idempotency_key,
    )
    changes = organisations.shared(
        path,
        change,
        policy,
        now,
        lambda organisation: organisation.deduct(policy, now, amount, feature=feature),
    )
    stored = yield from _store_path(policy, now, thresholds, path, changes)
    return Spent(stored[-1], organisations.spendable(changes, policy, now))


def set_limits(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: str,
    monthly_limit: int | None,
    overage_limit: int | None,
    rollover_cap: int | None = None,
    thresholds: Thresholds = (),
) -> Operation[TokenAccount]:
    """Change any of the limits; those not given keep their stored values."""
    account = yield from _load(user_id)
    change = account.with_limits(
        policy,
        now,
        account.monthly_limit if monthly_limit is None else monthly_limit,
        account.overage_limit if overage_limit is None else overage_limit,
        rollover_cap,
    )
    yield from _store_noting(policy, now, thresholds, account, change)
    return change.account


def set_thresholds(
    policy: MonthlyResetPolicy, now: datetime, user_id: str, thresholds: Thresholds | None
) -> Operation[TokenAccount]:
    """Set the account's own thresholds, or with ``None`` go back to the ledger's defaults."""
    account = yield from _load(user_id)
    change = account.with_thresholds(policy, now, thresholds)
    yield from _store(account, change)
    return change.account


def set_time_zone(
    policy: MonthlyResetPolicy, now: datetime, user_id: str, time_zone: str | None
) -> Operation[TokenAccount]:
    account = yield from _load(user_id)
    if account.time_zone == time_zone:
        return account.as_of(policy, now).account
    change = account.in_time_zone(policy, now, time_zone)
    yield from _store(account, change)
    return change.account


def void_grant(
    policy: MonthlyResetPolicy,
    now: datetime,
    grant_id: str,
    *,
    reason: str | None,
    idempotency_key: str | None,
    thresholds: Thresholds = (),
) -> Operation[Transaction]:
    """Take back what is left of a grant: an account that spent all but the grant has
    nothing left then, a crossing notified like a lowered limit's."""
    found: Grant | None = yield Call("find_grant", (grant_id,))
    if found is None:
        raise GrantNotFound(grant_id)
    account = yield from _load(found.user_id)
    prior = yield from _prior(idempotency_key, OperationType.VOID, found.user_id, None)
    if prior is not None:
        if prior.reference != grant_id:
            raise IdempotencyConflict(
                prior.idempotency_key or "", f"void of grant {prior.reference!r}"
            )
        return prior
    change = account.void_grant(policy, now, found, reason=reason, idempotency_key=idempotency_key)
    return (yield from _store_noting(policy, now, thresholds, account, change))[-1]


def acknowledge_notifications(consumer: str, up_to: int) -> Operation[int]:
    """Move ``consumer``'s cursor to ``up_to`` (never back); its position after.

    A cursor past the last notification recorded would skip the ones still to come,
    so it is refused.
    """
    last: int = yield Call("last_notification_id", ())
    if up_to > last:
        raise InvalidInput(
            f"cannot acknowledge notifications up to #{up_to}: the last recorded is #{last}"
        )
    position: int = yield Call("advance_notification_cursor", (consumer, up_to))
    return position


def grant(
    policy: MonthlyResetPolicy,
    now: datetime,
    offered: Grant,
    idempotency_key: str | None,
) -> Operation[Transaction]:
    account = yield from _load(offered.user_id)
    prior = yield from _prior(idempotency_key, OperationType.GRANT, offered.user_id, offered.amount)
    if prior is not None:
        return prior
    change = account.add_grant(policy, now, offered, idempotency_key=idempotency_key)
    return (yield from _store(account, change))[-1]


def reserve(
    policy: MonthlyResetPolicy,
    now: datetime,
    hold: Reservation,
    idempotency_key: str | None,
    thresholds: Thresholds = (),
) -> Operation[Spent]:
    path = yield from _load_path(hold.user_id)
    account = path[-1]
    prior = yield from _prior(
        idempotency_key, OperationType.RESERVE, hold.user_id, hold.amount, hold.feature
    )
    if prior is not None:
        spent = Spent(prior, organisations.replayed_remaining(prior))
    else:
        change = reservations.reserve(account, policy, now, hold, idempotency_key=idempotency_key)
        changes = organisations.shared(
            path,
            change,
            policy,
            now,
            lambda organisation: reservations.reserve(
                organisation,
                policy,
                now,
                organisations.share_of_hold(hold, organisation.user_id),
                idempotency_key=None,
            ),
        )
        stored = yield from _store_path(policy, now, thresholds, path, changes)
        spent = Spent(stored[-1], organisations.spendable(changes, policy, now))
    reference = spent.entry.reference
    if not reference:
        return spent
    reservation = yield Call("find_reservation", (reference,))
    return attrs.evolve(spent, reservation=reservation)


def settle(
    policy: MonthlyResetPolicy,
    now: datetime,
    reservation_id: str,
    actual: int | None,
    thresholds: Thresholds = (),
) -> Operation[Spent]:
    """Commit ``actual`` tokens of a reservation, or release it whole (``actual=None``)."""
    found: Reservation | None = yield Call("find_reservation", (reservation_id,))
    if found is None:
        raise ReservationNotFound(reservation_id)
    if organisations.is_share(found):
        raise InvalidInput(
            f"reservation {reservation_id!r} is organisation {found.user_id!r}'s share of a"
            " member's hold: commit or release the member's reservation"
        )
    path = yield from _load_path(found.user_id)
    change = reservations.settle_hold(path[-1], policy, now, found, actual)
    changes = organisations.shared(
        path,
        change,
        policy,
        now,
        lambda organisation: _settle_share(organisation, policy, now, found, actual),
    )
    stored = yield from _store_path(policy, now, thresholds, path, changes)
    return Spent(stored[-1], organisations.spendable(changes, policy, now))


def _settle_share(
    organisation: TokenAccount,
    policy: MonthlyResetPolicy,
    now: datetime,
    member_hold: Reservation,
    actual: int | None,
) -> Change | None:
    """An organisation's share of a commit or release: of its share of the hold, or, when
    that was released already (a write with a later clock saw it expire), the commit
    spent from its budget as a deduction would be, and for a release no part at all."""
    share = organisations.share_of_hold(member_hold, organisation.user_id)
    if any(hold.id == share.id for hold in organisation.holds):
        return reservations.settle_hold(organisation, policy, now, share, actual)
    if actual is None:
        return None
    return reservations.commit_unheld(
        organisation, policy, now, share, actual, reserved=member_hold.amount
    )


def refund(
    policy: MonthlyResetPolicy,
    now: datetime,
    transaction_id: int,
    amount: int | None,
    *,
    reason: str | None,
    idempotency_key: str | None,
) -> Operation[Transaction]:
    spent: Transaction | None = yield Call("find_transaction", (transaction_id,))
    if spent is None:
        raise TransactionNotFound(transaction_id)
    if spent.member_entry_id is not None:
        raise InvalidInput(
            f"entry #{transaction_id} is organisation {spent.user_id!r}'s share of entry"
            f" #{spent.member_entry_id}: refund that entry, which gives back both"
        )
    # the organisations that took a share, root first, then the member: the lock order
    shares: list[Transaction] = yield Call("entries_mirroring", (transaction_id,))
    payers = []
    for share in shares:
        payers.append((yield from _load(share.user_id)))
    account = yield from _load(spent.user_id)
    prior = yield from _prior(
        idempotency_key, OperationType.REFUND, spent.user_id, amount, spent.feature
    )
    if prior is not None:
        return prior
    change = yield from _refund_of(
        policy, now, account, spent, amount, reason=reason, idempotency_key=idempotency_key
    )
    changes = []
    for payer, share in zip(payers, shares, strict=True):
        back = yield from _refund_of(
            policy, now, payer, share, change.last_entry.amount, reason=reason
        )
        changes.append(back)
    shared = [*(organisations.mark(c, spent.user_id) for c in changes), change]
    stored = yield from _store_path(policy, now, (), [*payers, account], shared)
    return stored[-1]


def _refund_of(
    policy: MonthlyResetPolicy,
    now: datetime,
    account: TokenAccount,
    spent: Transaction,
    amount: int | None,
    *,
    reason: str | None,
    idempotency_key: str | None = None,
) -> Operation[Change]:
    referencing = yield Call("entries_referencing", (str(spent.id),))
    voided = yield from _voided_sources(spent, account)
    reset_since: bool = yield Call("reset_after", (account.user_id, spent.id))
    return refunds.refund(
        account,
        policy,
        now,
        spent,
        referencing,
        amount,
        credit_grant_id=new_id(),
        reason=reason,
        idempotency_key=idempotency_key,
        reset_since=reset_since,
        voided_grant_ids=voided,
    )


def reset(policy: MonthlyResetPolicy, now: datetime, user_id: str) -> Operation[bool]:
    """Store a pending reset; whether there was one."""
    account = yield from _load(user_id)
    change = account.as_of(policy, now)
    yield from _store(account, change)
    return change.has_reset


def reset_batch(
    policy: MonthlyResetPolicy,
    now: datetime,
    cutoffs: StaleCutoffs,
    after_user_id: str | None,
    batch_size: int,
) -> Operation[tuple[Sequence[TokenAccount], int]]:
    """Store the pending resets of the next ``batch_size`` candidates after ``after_user_id``.

    Returns the candidates (the last one is where the next batch starts) and
    how many of them were reset.
    """
    batch: list[TokenAccount] = yield Call(
        "lock_stale_candidates", (cutoffs, after_user_id, batch_size)
    )
    changed = [change for change in (a.as_of(policy, now) for a in batch) if change.entries]
    yield Call("save_accounts", ([change.account for change in changed],))
    yield Call("save_grants", ([grant for change in changed for grant in change.grants],))
    yield Call("save_reservations", ([r for change in changed for r in change.reservations],))
    yield Call("append_transactions", ([e for change in changed for e in change.entries],))
    return batch, sum(1 for change in changed if change.has_reset)


@attrs.frozen
class ResetStep:
    """Where the bulk reset stands after one unit of work of it."""

    after_user_id: str | None
    """The last account it looked at: the next step starts after it."""
    resets: int
    last: bool
    """Whether no stale account can be left after it."""
    for_the_domain: int = 0
    """How many of the next candidates need the domain's decision (an anchor, grants or
    holds): the next step is a batch of that many, by :func:`reset_step`."""
    final_batch: bool = False
    """Whether those candidates are the last ones: no step is needed after their batch."""


def reset_step(
    policy: MonthlyResetPolicy,
    now: datetime,
    cutoffs: StaleCutoffs,
    after_user_id: str | None,
    batch_size: int,
    *,
    partial: bool = False,
    final: bool = False,
) -> Operation[ResetStep]:
    """:func:`reset_batch` as a :class:`ResetStep`: the last when it came back short, or,
    for a ``partial`` batch (the candidates a :class:`CalendarResets` left), when ``final``."""
    batch, resets = yield from reset_batch(policy, now, cutoffs, after_user_id, batch_size)
    after = batch[-1].user_id if batch else after_user_id
    return ResetStep(after, resets, last=final if partial else len(batch) < batch_size)


@attrs.frozen
class CalendarResets:
    """The next run of the bulk reset that the domain decides without reading the accounts.

    Of the next ``limit`` candidates after ``after_user_id`` (locked in ``user_id``
    order, as :meth:`~token_ledger.repository.UnitOfWork.lock_stale_candidates` selects
    them), the ones before the first that is off the ledger's calendar (a ``reset_anchor``
    or a ``time_zone``) or has a rollover cap, a grant, a hold or windows are accounts
    whose calendar period ended and whose reset is nothing more: each gets usage 0,
    ``last_monthly_reset`` :attr:`period_start`, ``updated_at`` stamped with ``now``
    (:attr:`earlier` when it is ``now`` already) and the ``reset`` entry the domain
    writes (:meth:`context` is its ``operation_context``; ``balance_after`` the limit,
    effects ``{"usage": -used}``, or none when nothing was used), in ``user_id`` order.

    A store that can do that in one transaction offers ``reset_calendar_run(run)``
    and answers a :class:`ResetStep`: how many it reset, the last of them, and how
    many candidates after them need the domain (for :func:`reset_step`), or ``None``
    to leave the whole batch to :func:`reset_step`.
    """

    cutoffs: StaleCutoffs
    now: datetime
    after_user_id: str | None
    limit: int

    @property
    def period_start(self) -> datetime:
        return self.cutoffs.calendar

    @property
    def earlier(self) -> datetime:
        return self.now - _EARLIER

    @property
    def period_start_text(self) -> str:
        """The new period's start as ``operation_context`` writes it."""
        return context_instant(self.period_start)

    def context(self, previous_used: int, previous_period_start: datetime) -> dict[str, Any]:
        """The reset entry's ``operation_context``, key for key in the domain's order."""
        return {
            "previous_used": previous_used,
            "previous_period_start": context_instant(previous_period_start),
            "period_start": self.period_start_text,
        }


def reset_calendar_run(
    now: datetime, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
) -> Operation[ResetStep | None]:
    """The next :class:`CalendarResets` in one call of the repository, or ``None``."""
    run = CalendarResets(cutoffs, now, after_user_id, limit)
    step: ResetStep | None = yield Call("reset_calendar_run", (run,))
    return step


def new_id() -> str:
    """A fresh id for a grant or a reservation: random, so no two writers pick the same."""
    return uuid.uuid4().hex
