"""The in-memory engine: a full adapter for tests, notebooks and single processes.

It passes the same contract suite as the database adapters. One lock
serialises units of work, and changes are staged until commit, so a block
that raises leaves nothing behind. Filters are the SQL adapters' conditions
(``token_ledger._rows``) as Python.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from token_ledger._rows import account_conditions, history_conditions, matches
from token_ledger.account import TokenAccount
from token_ledger.grants import Grant, Reservation
from token_ledger.organisations import MAX_DEPTH
from token_ledger.repository import AccountFilter, HistoryQuery, StaleCutoffs, UsageQuery
from token_ledger.thresholds import Notification
from token_ledger.transactions import OperationType, Transaction
from token_ledger.usage import UsageRow, fold_entries, organisation_entries


class MemoryUnitOfWork:
    """Changes staged in dictionaries, applied to the repository only when the unit commits."""

    def __init__(self, repository: MemoryRepository) -> None:
        self._repository = repository
        self.accounts: dict[str, TokenAccount] = {}
        self.entries: list[Transaction] = []
        self.keys: dict[str, Transaction] = {}
        self.reservations: dict[str, Reservation] = {}
        self.grants: dict[str, Grant] = {}
        self.notifications: list[Notification] = []
        self.cursors: dict[str, int] = {}

    def load_account(self, user_id: str) -> TokenAccount | None:
        staged = self.accounts.get(user_id)
        return staged if staged is not None else self._repository._accounts.get(user_id)

    def load_path(self, user_id: str) -> list[TokenAccount]:
        path: list[TokenAccount] = []
        account = self.load_account(user_id)
        while account is not None and len(path) < MAX_DEPTH:
            path.insert(0, account)
            above = account.organisation_id
            account = None if above is None else self.load_account(above)
        return path

    def members_of(self, user_id: str) -> list[str]:
        merged = {**self._repository._accounts, **self.accounts}
        return sorted(a.user_id for a in merged.values() if a.organisation_id == user_id)

    def insert_account(self, account: TokenAccount) -> bool:
        if self.load_account(account.user_id) is not None:
            return False
        self.accounts[account.user_id] = account
        return True

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        for account in accounts:
            self.accounts[account.user_id] = account

    def save_grants(self, grants: Sequence[Grant]) -> None:
        """Live grants live inside the stored account value too; these rows are kept for
        :meth:`find_grant`, which also finds the spent, expired and voided ones."""
        self.grants.update((g.id, g) for g in grants)

    def find_grant(self, grant_id: str) -> Grant | None:
        staged = self.grants.get(grant_id)
        return staged or self._repository._grants.get(grant_id)

    def save_reservations(self, reservations: Sequence[Reservation]) -> None:
        self.reservations.update((r.id, r) for r in reservations)

    def find_transaction(self, transaction_id: int) -> Transaction | None:
        for entry in (*self._repository._entries, *self.entries):
            if entry.id == transaction_id:
                return _detached(entry)
        return None

    def entries_referencing(self, reference: str) -> list[Transaction]:
        return [
            _detached(entry)
            for entry in (*self._repository._entries, *self.entries)
            if entry.reference == reference
        ]

    def reset_after(self, user_id: str, entry_id: int) -> bool:
        return any(
            entry.user_id == user_id
            and entry.operation_type is OperationType.RESET
            and (entry.id or 0) > entry_id
            for entry in (*self._repository._entries, *self.entries)
        )

    def entries_mirroring(self, entry_id: int) -> list[Transaction]:
        return [
            _detached(entry)
            for entry in (*self._repository._entries, *self.entries)
            if entry.member_entry_id == entry_id
        ]

    def find_reservation(self, reservation_id: str) -> Reservation | None:
        staged = self.reservations.get(reservation_id)
        return staged or self._repository._reservations.get(reservation_id)

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        stored = []
        for entry in entries:
            entry = attrs.evolve(entry, id=self._repository._next_id + len(self.entries))
            kept = _detached(entry)
            self.entries.append(kept)
            if entry.idempotency_key is not None:
                self.keys[entry.idempotency_key] = kept
            stored.append(entry)
        return stored

    def find_by_idempotency_key(self, key: str) -> Transaction | None:
        found = self.keys.get(key) or self._repository._keys.get(key)
        return None if found is None else _detached(found)

    def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        merged = {**self._repository._accounts, **self.accounts}
        return _scan(merged.values(), AccountFilter(stale=cutoffs), after_user_id, limit)

    def append_notifications(self, notifications: Sequence[Notification]) -> list[Notification]:
        stored = []
        for note in notifications:
            same = (note.user_id, note.threshold, note.period_start)
            earlier = sum(
                1
                for kept in (*self._repository._notifications, *self.notifications)
                if (kept.user_id, kept.threshold, kept.period_start) == same
            )
            numbered = attrs.evolve(
                note,
                id=self._repository._last_notification + len(self.notifications) + 1,
                occurrence=earlier + 1,
            )
            self.notifications.append(numbered)
            stored.append(numbered)
        return stored

    def last_notification_id(self) -> int:
        return self._repository._last_notification + len(self.notifications)

    def advance_notification_cursor(self, consumer: str, up_to: int) -> int:
        position = max(
            up_to, self.cursors.get(consumer, self._repository._cursors.get(consumer, 0))
        )
        self.cursors[consumer] = position
        return position


class MemoryRepository:
    """Accounts and entries in Python dictionaries; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._accounts: dict[str, TokenAccount] = {}
        self._entries: list[Transaction] = []
        self._keys: dict[str, Transaction] = {}
        self._reservations: dict[str, Reservation] = {}
        self._grants: dict[str, Grant] = {}
        self._next_id = 1
        self._notifications: list[Notification] = []
        self._last_notification = 0
        self._cursors: dict[str, int] = {}

    @contextmanager
    def unit_of_work(self) -> Iterator[MemoryUnitOfWork]:
        with self._lock:
            work = MemoryUnitOfWork(self)
            yield work
            self._accounts.update(work.accounts)
            self._entries.extend(work.entries)
            self._keys.update(work.keys)
            self._reservations.update(work.reservations)
            self._grants.update(work.grants)
            self._next_id += len(work.entries)
            self._notifications.extend(work.notifications)
            self._last_notification += len(work.notifications)
            self._cursors.update(work.cursors)

    def get_account(self, user_id: str) -> TokenAccount | None:
        with self._lock:
            return self._accounts.get(user_id)

    def history(self, query: HistoryQuery) -> list[Transaction]:
        with self._lock:
            entries = list(self._entries)
        conditions = history_conditions(query)
        found = []
        for entry in reversed(entries):
            if matches(conditions, entry):
                found.append(_detached(entry))
                if len(found) == query.limit:
                    break
        return found

    def count_transactions(self, query: HistoryQuery) -> int:
        conditions = history_conditions(attrs.evolve(query, before_id=None))
        with self._lock:
            return sum(1 for entry in self._entries if matches(conditions, entry))

    def count_accounts(self) -> int:
        with self._lock:
            return len(self._accounts)

    def notifications(self, after: int, limit: int) -> list[Notification]:
        with self._lock:
            # ids are 1, 2, 3...: the one after ``after`` is at index ``after``
            return self._notifications[after : after + limit]

    def notification_cursor(self, consumer: str) -> int:
        with self._lock:
            return self._cursors.get(consumer, 0)

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Added up here, entry by entry: this engine is its own database."""
        with self._lock:
            entries = list(self._entries)
        if query.organisation is not None:
            entries = organisation_entries(entries, query.organisation)
        return fold_entries(query, entries)

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        with self._lock:
            accounts = list(self._accounts.values())
        return _scan(accounts, where, after_user_id, limit)

    def close(self) -> None:
        """Nothing to release; present so every repository can be closed alike."""


def _detached(entry: Transaction) -> Transaction:
    """A copy whose context shares nothing with the store.

    ``Transaction`` is frozen but its context is a dict: a database engine
    hands back a new one on every read, and so must this engine, or editing
    an entry that ``history()`` returned would rewrite the log.
    """
    return attrs.evolve(entry, operation_context=_copy_json(entry.operation_context))


def _copy_json(value: Any) -> Any:
    """A deep copy of a JSON document, several times faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _scan(
    accounts: Iterable[TokenAccount], where: AccountFilter, after_user_id: str | None, limit: int
) -> list[TokenAccount]:
    conditions = account_conditions(where, after_user_id)
    found = sorted(
        (account for account in accounts if matches(conditions, account)),
        key=lambda account: account.user_id,
    )
    return found[:limit]
