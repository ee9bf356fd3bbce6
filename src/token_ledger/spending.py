"""Where spent tokens come from: the allowance, then grants, then overage.

The one home of the spending order, shared by deductions and by commits of
reservations.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from token_ledger.change import Change, entry_of
from token_ledger.grants import Grant
from token_ledger.transactions import Effects, OperationType
from token_ledger.windows import counted

if TYPE_CHECKING:
    from token_ledger.account import TokenAccount


def spend(
    before: TokenAccount,
    operation_type: OperationType,
    amount: int,
    now: datetime,
    *,
    base: Effects | None = None,
    **entry_fields: Any,
) -> Change:
    """Take ``amount`` from the monthly allowance, then from grants in their spending
    order (:meth:`Grant.spending_order`), then from overage, counting it in every
    window; or, when more is asked for than is spendable, record the refusal as a
    failed entry.

    ``base`` is added to the entry's effects: a commit also releases its hold.
    """
    if amount > before.spendable:
        refused = entry_of(
            before, before, operation_type, amount, now, success=False, **entry_fields
        )
        return Change(before, (refused,))
    from_allowance = min(amount, before.monthly_remaining)
    left = amount - from_allowance
    drawn: list[Grant] = []
    taken: dict[str, int] = {}
    for grant in sorted(before.grants, key=Grant.spending_order):
        take = min(left, grant.remaining)
        if take:
            taken[grant.id] = -take
            drawn.append(attrs.evolve(grant, remaining=grant.remaining - take))
            left -= take
    usage = from_allowance + left
    changed = {grant.id: grant for grant in drawn}
    after = attrs.evolve(
        before,
        monthly_tokens_used=before.monthly_tokens_used + usage,
        grant_balance=before.grant_balance - (amount - usage),
        grants=tuple(g for g in (changed.get(g.id, g) for g in before.grants) if g.remaining > 0),
        windows=counted(before.windows, amount),
        updated_at=now,
    )
    spent = Effects(usage=usage, grants=taken)
    effects = spent if base is None else base + spent
    entry = entry_of(before, after, operation_type, amount, now, effects=effects, **entry_fields)
    return Change(after, (entry,), tuple(drawn))
