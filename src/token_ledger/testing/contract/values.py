"""Values the port tests write, built the way the domain builds them.

Every account written through the port is consistent as the domain keeps it
(``grant_balance`` is the sum of its live ``grants``, ``reserved_tokens`` of
its held ``holds``), and every update stamps a later ``updated_at``: the
optional SQL's triggers tell a library's write by its new ``updated_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from token_ledger import (
    Grant,
    MonthlyResetPolicy,
    OperationType,
    Reservation,
    ReservationStatus,
    TokenAccount,
    Transaction,
)
from token_ledger.repository import TokenRepository

UTC = timezone.utc
NOW = datetime(2026, 1, 15, tzinfo=UTC)
POLICY = MonthlyResetPolicy()


class Boom(Exception):
    """Raised inside a unit of work to roll it back."""


def account(
    user_id: str = "u1",
    monthly_limit: int = 10,
    *,
    at: datetime = NOW,
    reset_anchor: datetime | None = None,
    **changes: Any,
) -> TokenAccount:
    """An account opened at ``at`` as the domain opens it, with ``changes`` applied."""
    opened = TokenAccount.open(user_id, monthly_limit, POLICY, at, reset_anchor)
    return attrs.evolve(opened, **changes) if changes else opened


def later(value: TokenAccount, minutes: int = 1, **changes: Any) -> TokenAccount:
    """``value`` as written ``minutes`` after it last was, with ``changes`` applied."""
    return attrs.evolve(value, updated_at=value.updated_at + timedelta(minutes=minutes), **changes)


def entry(
    user_id: str = "u1",
    amount: int = 1,
    *,
    operation_type: OperationType = OperationType.DEDUCT,
    at: datetime = NOW,
    **fields: Any,
) -> Transaction:
    """A ledger entry not yet stored (its ``id`` is ``None``)."""
    return Transaction(user_id, operation_type, amount, at, balance_after=0, **fields)


def grant(
    grant_id: str,
    user_id: str = "u1",
    amount: int = 5,
    *,
    at: datetime = NOW,
    expires_at: datetime | None = None,
    reason: str | None = None,
) -> Grant:
    return Grant.offered(grant_id, user_id, amount, at, expires_at, reason)


def hold(
    reservation_id: str,
    user_id: str = "u1",
    amount: int = 3,
    *,
    at: datetime = NOW,
    status: ReservationStatus = ReservationStatus.HELD,
    feature: str | None = None,
) -> Reservation:
    return Reservation(
        reservation_id, user_id, amount, at, at + timedelta(minutes=15), status, feature
    )


def insert(repository: TokenRepository, *accounts: TokenAccount) -> list[bool]:
    """Inserts the accounts in one unit of work; what ``insert_account`` answered for each."""
    with repository.unit_of_work() as work:
        return [work.insert_account(value) for value in accounts]


def append(repository: TokenRepository, *entries: Transaction) -> list[Transaction]:
    """Appends the entries in one unit of work; the entries with their ``id``."""
    with repository.unit_of_work() as work:
        return work.append_transactions(entries)


def assigned_ids(entries: Sequence[Transaction]) -> list[int]:
    """The ``id`` of each stored entry."""
    found = [value.id for value in entries]
    return [value for value in found if value is not None]
