"""Organisations: accounts whose members spend from their budget as well as their own.

An account may belong to an organisation account (``organisation_id``), which may
belong to one in turn, up to :data:`MAX_DEPTH` levels from the root. A member's
deduction, hold or commit must fit every budget on its path, the member's own and
each organisation's above it, each with its allowance, grants, overage and windows;
it is recorded against each, in one unit of work: the member's entry, and on every
organisation an entry of the same operation (its *share*) whose ``member_entry_id``
is the member's entry. A refund of the member's entry gives the tokens back to each
budget that paid. Each budget's own figures therefore add up on their own, and
``reconcile()`` checks organisations like any account.

Writers lock the accounts of a path root first, so two writers on one organisation
queue at the root and never deadlock; the path is read, locked, and checked
(:func:`check_path`): a path that changed in between is a race the unit of work runs
again.

Moving a member to another organisation takes effect from the move: what it spent
stays spent where it was, and is refunded there. A member holding reservations
cannot move (its organisations hold a share of each).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from token_ledger.change import Change
from token_ledger.errors import InvalidInput, LedgerInvariantError, TransientStorageError
from token_ledger.grants import Reservation
from token_ledger.transactions import Effects, Transaction

if TYPE_CHECKING:
    from datetime import datetime

    from token_ledger.account import TokenAccount
    from token_ledger.policy import MonthlyResetPolicy

MAX_DEPTH = 8
"""The most accounts a path holds, root to member."""

SHARE_SEPARATOR = "/"


def share_of_hold(hold: Reservation, organisation_id: str) -> Reservation:
    """An organisation's share of a member's hold: the same tokens, held on its budget.

    Its id is the member's reservation id, ``/``, the organisation's id: derived, so
    a commit finds it without a lookup; reservation ids the ledger makes have no ``/``.
    """
    return Reservation(
        f"{hold.id}{SHARE_SEPARATOR}{organisation_id}",
        organisation_id,
        hold.amount,
        hold.created_at,
        hold.expires_at,
        feature=hold.feature,
    )


def is_share(reservation: Reservation) -> bool:
    return SHARE_SEPARATOR in reservation.id


def check_path(path: Sequence[TokenAccount]) -> None:
    """Refuse a path whose links changed between its reading and its locking (a member
    moved meanwhile): a race, which running the unit of work again resolves."""
    for above, below in itertools.pairwise(path):
        if below.organisation_id != above.user_id:
            raise TransientStorageError(
                f"{below.user_id!r} moved while its organisations were being locked"
            )
    top = path[0]
    if top.organisation_id is None:
        return
    if len(path) >= MAX_DEPTH:  # the library never makes one: a chain written by hand
        raise LedgerInvariantError(
            f"the path of {path[-1].user_id!r} is longer than {MAX_DEPTH} accounts (a cycle of"
            " organisation_id written by hand?); nothing was written"
        )
    raise TransientStorageError(
        f"{top.user_id!r} joined organisation {top.organisation_id!r} while its path was being"
        " locked, or that organisation does not exist (an organisation_id written by hand?)"
    )


def check_move(member_id: str, above: Sequence[TokenAccount], height_below: int) -> None:
    """A move that would make a cycle, or a path longer than :data:`MAX_DEPTH`, is refused.

    ``above`` is the new organisation's path, root first; ``height_below`` how many
    levels the member's own members add under it.
    """
    if above[-1].user_id == member_id:
        raise InvalidInput(f"{member_id!r} cannot be its own organisation")
    if any(account.user_id == member_id for account in above):
        raise InvalidInput(
            f"{member_id!r} cannot join {above[-1].user_id!r}, which is one of its own members"
        )
    if len(above) + 1 + height_below > MAX_DEPTH:
        raise InvalidInput(
            f"{member_id!r} cannot join {above[-1].user_id!r}: paths hold at most"
            f" {MAX_DEPTH} accounts, root to member"
        )


def shared(
    path: Sequence[TokenAccount],
    change: Change,
    policy: MonthlyResetPolicy,
    now: datetime,
    share: Callable[[TokenAccount], Change | None],
) -> list[Change]:
    """The changes of every account on ``path`` (root first) for the member's ``change``.

    ``share`` computes an organisation's share of it: a change whose last entry records
    the share, or ``None`` when the organisation takes no part. When the member's change
    succeeded but an organisation cannot take its share, the member's entry becomes a
    refusal naming that organisation (``refused_by``) and what the path had left
    (``available``). Only the organisations that take a part are written.
    """
    above = path[:-1]
    if not above:
        return [change]
    untouched = [Change(account) for account in above]
    if not change.entries or not change.last_entry.success:
        return [*untouched, change]
    shares = [share(account) for account in above]
    refusing = next(
        (i for i, s in enumerate(shares) if s is not None and not s.last_entry.success), None
    )
    if refusing is None:
        member = path[-1].user_id
        marked = [
            kept if part is None else mark(part, member)
            for kept, part in zip(untouched, shares, strict=True)
        ]
        return [*marked, change]
    own = path[-1].as_of(policy, now)
    entry = change.last_entry
    refused = attrs.evolve(
        entry,
        success=False,
        effects=Effects(),
        balance_after=own.account.monthly_remaining,
        operation_context={
            **entry.operation_context,
            "refused_by": above[refusing].user_id,
            "available": spendable([*untouched, own], policy, now),
        },
    )
    return [*untouched, own.then(Change(own.account, (refused,)))]


def replayed_remaining(entry: Transaction) -> int:
    """What a retry of a spending write reports as left: what the refusal of a member by
    its organisation said (its ``available``), else the entry's ``balance_after``."""
    available = entry.operation_context.get("available")
    if not entry.success and "refused_by" in entry.operation_context and isinstance(available, int):
        return available
    return entry.balance_after


def share_context(context: Mapping[str, Any], member_id: str) -> dict[str, Any]:
    """The ``operation_context`` of an organisation's share: its own, naming the member."""
    return {**context, "member": member_id}


def mark(share: Change, member_id: str) -> Change:
    """The share's last entry, the organisation's record of the member's operation,
    names the member (its ``member_entry_id`` is set when the member's entry is stored)."""
    last = share.last_entry
    context = share_context(last.operation_context, member_id)
    return attrs.evolve(
        share, entries=(*share.entries[:-1], attrs.evolve(last, operation_context=context))
    )


def linked(entries: Sequence[Transaction], member_entry_id: int | None) -> list[Transaction]:
    """An organisation's entries, its share (the one that names the member) linked to the
    member's stored entry."""
    return [
        attrs.evolve(entry, member_entry_id=member_entry_id)
        if "member" in entry.operation_context and entry.member_entry_id is None
        else entry
        for entry in entries
    ]


def spendable(changes: Sequence[Change], policy: MonthlyResetPolicy, now: datetime) -> int:
    """What one more deduction of the member may take: the least any budget on its path
    has left, each seen as it is at ``now`` (an organisation not written may hold a reset
    still pending)."""
    return min(change.account.as_of(policy, now).account.spendable for change in changes)
