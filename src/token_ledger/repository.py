"""The storage port: what an adapter must provide, and nothing about how.

An adapter is whatever passes the contract suite in ``tests/contract``. The
domain decides every value that is written; adapters only load, lock and
store, each write inside one unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

import attrs

from token_ledger.account import TokenAccount
from token_ledger.grants import Grant, Reservation
from token_ledger.transactions import OperationType, Transaction


@attrs.frozen
class StaleCutoffs:
    """Bounds that every stale account falls under, so a store can pre-select them.

    An account without an anchor is stale when ``last_monthly_reset < calendar``.
    An anchored one can only be stale when ``last_monthly_reset <= anchored``;
    the domain makes the final decision for those.
    """

    calendar: datetime
    anchored: datetime


@attrs.frozen
class AccountFilter:
    """A pre-selection of accounts that a store can answer from its indexes.

    Stores may return more than match exactly (anchored accounts, accounts
    whose usage belongs to an ended period); the domain makes the decision.
    """

    stale: StaleCutoffs | None = None
    usage_above: float | None = None
    """A fraction of the limit: ``monthly_tokens_used / monthly_limit > usage_above``."""


@attrs.frozen
class HistoryQuery:
    """Filters for :meth:`TokenRepository.history`; results are newest first.

    ``before_id`` pages by keyset: pass the ``id`` of the last entry of the
    previous page.
    """

    user_id: str | None = None
    operation_type: OperationType | None = None
    feature: str | None = None
    success: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    reference: str | None = None
    limit: int = 100


class UnitOfWork(Protocol):
    """One write transaction: all of it is stored, or none of it.

    Accounts returned by ``load_account`` and ``lock_stale_candidates`` stay
    locked against concurrent writers until the unit of work ends.
    """

    def load_account(self, user_id: str) -> TokenAccount | None:
        """The account with its live grants (``remaining > 0``) and held reservations."""
        ...

    def insert_account(self, account: TokenAccount) -> bool:
        """Store a new account; ``False`` (and no write) if the user already has one."""
        ...

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        """Store the accounts' own columns; grants and holds are saved on their own."""
        ...

    def save_grants(self, grants: Sequence[Grant]) -> None:
        """Insert new grants and update the ``remaining`` of known ones."""
        ...

    def save_reservations(self, reservations: Sequence[Reservation]) -> None:
        """Insert new reservations and update the ``status`` of known ones."""
        ...

    def find_transaction(self, transaction_id: int) -> Transaction | None: ...

    def entries_referencing(self, reference: str) -> list[Transaction]:
        """Entries whose ``reference`` is ``reference``, oldest first."""
        ...

    def find_reservation(self, reservation_id: str) -> Reservation | None: ...

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        """Store entries in order and return them with their ``id`` assigned."""
        ...

    def find_by_idempotency_key(self, key: str) -> Transaction | None: ...

    def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        """Up to ``limit`` possibly stale accounts, by ``user_id`` after ``after_user_id``."""
        ...


class TokenRepository(Protocol):
    """Where accounts and ledger entries live.

    Every account a repository returns carries its live grants and held
    reservations, so that the domain sees the whole of a user's balance.
    """

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """Commit on a clean exit, roll back when the block raises."""
        ...

    def get_account(self, user_id: str) -> TokenAccount | None:
        """Read without locking; the value may be stale as soon as it is returned."""
        ...

    def history(self, query: HistoryQuery) -> list[Transaction]: ...

    def count_transactions(self, query: HistoryQuery) -> int:
        """How many entries ``history`` would return without ``limit`` and ``before_id``."""
        ...

    def count_accounts(self) -> int: ...

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        """Up to ``limit`` accounts matching ``where``, by ``user_id`` after ``after_user_id``."""
        ...

    def close(self) -> None: ...
