"""Where the tokens of a refund go back: the rule, decided on values alone
(:func:`plan_refund`), and applied to an account (:func:`refund`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from token_ledger.change import Change, entry_of, stamped
from token_ledger.errors import InvalidAmount, InvalidInput
from token_ledger.grants import Grant
from token_ledger.transactions import Effects, OperationType, Transaction
from token_ledger.windows import given_back

if TYPE_CHECKING:
    from token_ledger.account import TokenAccount
    from token_ledger.policy import MonthlyResetPolicy

REFUNDABLE = frozenset({OperationType.DEDUCT, OperationType.COMMIT})


@attrs.frozen
class RefundPlan:
    """How many tokens of a refund go back to which balance."""

    usage: int
    """Back to this period's usage."""
    grants: tuple[tuple[str, int], ...]
    """Back to live grants the deduction drew on, by grant id."""
    credit: int
    """Credited as a new grant that never expires: the rest had no live home."""
    forfeited: int = 0
    """Drawn from a voided grant: given back to nobody, since voiding is for good."""


def earlier_refunds(referencing: Iterable[Transaction]) -> list[Transaction]:
    """Of the entries that reference a deduction, the refunds of it."""
    return [entry for entry in referencing if entry.operation_type is OperationType.REFUND]


def refundable(spent: Transaction, earlier: Iterable[Transaction], amount: int | None) -> int:
    """The amount to refund (default: all that is left of ``spent``), or the refusal.

    Only successful deductions and commits are refunded, and never more than
    is left of them after earlier refunds.
    """
    if spent.operation_type not in REFUNDABLE or not spent.success:
        raise InvalidInput(f"entry #{spent.id} is not a successful deduction")
    left = spent.amount - sum(refund.amount for refund in earlier)
    if left == 0:
        raise InvalidAmount(f"entry #{spent.id} has already been refunded in full")
    if amount is None:
        return left
    if amount > left:
        raise InvalidAmount(
            f"cannot refund {amount} tokens of entry #{spent.id}: only {left} are left of it"
        )
    return amount


def plan_refund(
    spent: Transaction,
    already_refunded: int,
    amount: int,
    *,
    period_start: datetime,
    reset_since: bool,
    live_grant_ids: Collection[str],
    voided_grant_ids: Collection[str] = (),
) -> RefundPlan:
    """Walk the deduction's sources in a fixed order (its usage, then each grant it drew
    on), skipping what earlier refunds already returned.

    Tokens go back where they came from when that still exists: usage of the
    period starting at ``period_start``, a grant that is still live. Anything
    else (usage of an ended period, an expired or spent grant) is credited,
    because the ended period's allowance can no longer be spent; except what a grant
    since voided paid for, which is forfeited rather than brought back as a credit.

    The usage of a deduction that a reset came after (``reset_since``) is an ended
    period's, whenever the period starts: a change of zone just after a reset makes the
    new zone's period the account's, which may have begun before that reset.
    """
    sources = [("usage", spent.effects.usage), *((g, -a) for g, a in spent.effects.grants)]
    in_this_period = spent.created_at >= period_start and not reset_since
    usage = credit = forfeited = 0
    grants: dict[str, int] = {}
    to_skip, to_return = already_refunded, amount
    for source, size in sources:
        skipped = min(to_skip, size)
        to_skip -= skipped
        part = min(to_return, size - skipped)
        to_return -= part
        if not part:
            continue
        if source == "usage" and in_this_period:
            usage += part
        elif source in live_grant_ids:
            grants[source] = part
        elif source in voided_grant_ids:
            forfeited += part
        else:
            credit += part
    return RefundPlan(usage, tuple(grants.items()), credit, forfeited)


@stamped
def refund(
    stored: TokenAccount,
    policy: MonthlyResetPolicy,
    now: datetime,
    spent: Transaction,
    referencing: Iterable[Transaction],
    amount: int | None,
    *,
    credit_grant_id: str,
    reason: str | None,
    idempotency_key: str | None,
    reset_since: bool,
    voided_grant_ids: Iterable[str] = (),
) -> Change:
    """Give back ``amount`` (default: all that is left) of the successful deduction
    ``spent``; ``referencing`` are the entries that reference it, earlier refunds among
    them, and ``reset_since`` whether a reset entry of the account came after it. Where
    each token goes is :func:`~token_ledger.refunds.plan_refund`'s rule; a credit becomes
    a new grant that never expires."""
    earlier = earlier_refunds(referencing)
    amount = refundable(spent, earlier, amount)
    current = stored.as_of(policy, now)
    account = current.account
    live = {grant.id: grant for grant in account.grants if grant.is_live(now)}
    plan = plan_refund(
        spent,
        sum(refund.amount for refund in earlier),
        amount,
        period_start=account.last_monthly_reset,
        reset_since=reset_since,
        live_grant_ids=live.keys(),
        voided_grant_ids=frozenset(voided_grant_ids),
    )
    returned = {g: attrs.evolve(live[g], remaining=live[g].remaining + n) for g, n in plan.grants}
    credited = (
        (
            Grant(
                credit_grant_id,
                stored.user_id,
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
        windows=given_back(account.windows, amount, spent.created_at),
        updated_at=now,
    )
    entry = entry_of(
        stored,
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
        operation_context=(
            {"reason": reason, "forfeited": plan.forfeited}
            if plan.forfeited
            else {"reason": reason}
        ),
    )
    return current.then(Change(account, (entry,), (*returned.values(), *credited)))
