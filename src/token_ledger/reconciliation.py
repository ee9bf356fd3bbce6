"""Checking stored balances against the ledger, like the seed's "compare table vs view" step."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from token_ledger.account import TokenAccount
from token_ledger.transactions import Effects, Transaction


@attrs.frozen
class Discrepancy:
    """A stored figure that the ledger's entries do not add up to.

    ``field`` names the figure: a column of ``user_tokens``, ``grant:<id>``
    for one grant's remaining balance, or ``holds`` for the held reservations.
    """

    user_id: str
    field: str
    stored: int
    expected: int

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


def reconcile_account(account: TokenAccount, entries: Iterable[Transaction]) -> list[Discrepancy]:
    """Every discrepancy between ``account`` and the sum of its entries' effects."""
    return discrepancies(account, effects_of(entries))


def effects_of(entries: Iterable[Transaction]) -> Effects:
    """What the entries did to the balances, summed: a log read page by page adds up."""
    return sum((entry.effects for entry in entries if entry.success), Effects())


def discrepancies(account: TokenAccount, total: Effects) -> list[Discrepancy]:
    """Every figure of ``account`` that differs from what ``total`` says it should be."""
    expected_grants = {grant_id: amount for grant_id, amount in total.grants if amount}
    stored_grants = {grant.id: grant.remaining for grant in account.grants}
    figures = [
        ("monthly_tokens_used", account.monthly_tokens_used, total.usage),
        ("reserved_tokens", account.reserved_tokens, total.reserved),
        ("holds", sum(hold.amount for hold in account.holds), total.reserved),
        ("grant_balance", account.grant_balance, sum(expected_grants.values())),
        *(
            (f"grant:{grant_id}", stored_grants.get(grant_id, 0), expected_grants.get(grant_id, 0))
            for grant_id in sorted(expected_grants.keys() | stored_grants.keys())
        ),
    ]
    return [
        Discrepancy(account.user_id, field, stored, expected)
        for field, stored, expected in figures
        if stored != expected
    ]
