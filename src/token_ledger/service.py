"""``TokenLedger``: the domain, a repository and a clock, wired into one object."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from token_ledger import _validation
from token_ledger.account import Change, TokenAccount
from token_ledger.clock import Clock, system_clock
from token_ledger.errors import AccountExists, AccountNotFound, InsufficientTokens, InvalidInput
from token_ledger.ledger import DeductResult, History, Ledger, TokenStatus
from token_ledger.memory import MemoryRepository
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.repository import HistoryQuery, StaleCutoffs, TokenRepository, UnitOfWork
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from types import TracebackType

    import sqlite_utils

DEFAULT_RESET_BATCH_SIZE = 1000
MAX_HISTORY_LIMIT = 10_000


class TokenLedger:
    """Monthly token allowances, spent safely.

    Every write is one unit of work of the repository: a pending reset and the
    operation that revealed it are stored together or not at all. Reads such
    as :meth:`status` never write; they show the reset the next write will make.
    """

    def __init__(
        self,
        repository: TokenRepository,
        *,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.repository = repository
        self.policy = policy if policy is not None else MonthlyResetPolicy()
        self.ledger = Ledger(self.policy)
        self._clock = clock

    @classmethod
    def memory(
        cls, *, policy: MonthlyResetPolicy | None = None, clock: Clock = system_clock
    ) -> TokenLedger:
        """A ledger held in this process only; nothing survives it."""
        return cls(MemoryRepository(), policy=policy, clock=clock)

    @classmethod
    def sqlite(
        cls,
        database: str | Path | sqlite_utils.Database | sqlite3.Connection,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
    ) -> TokenLedger:
        """A ledger in a SQLite file (created if missing), ``":memory:"``, or your connection.

        Every process that opens the same file shares the same ledger safely;
        see :class:`~token_ledger.sqlite.SQLiteRepository` for durability.
        """
        from token_ledger.sqlite import SQLiteRepository

        repository = SQLiteRepository(database, synchronous=synchronous, busy_timeout=busy_timeout)
        return cls(repository, policy=policy, clock=clock)

    def __enter__(self) -> TokenLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.repository.close()

    def now(self) -> datetime:
        return _validation.instant(self._clock(), "clock()")

    # accounts

    def open_account(
        self, user_id: str, monthly_limit: int, *, reset_anchor: datetime | None = None
    ) -> TokenAccount:
        """Create the user's account; :class:`AccountExists` if there is one already."""
        account = self._new_account(user_id, monthly_limit, reset_anchor)
        with self.repository.unit_of_work() as work:
            if not work.insert_account(account):
                raise AccountExists(user_id)
        return account

    def ensure_account(
        self, user_id: str, monthly_limit: int, *, reset_anchor: datetime | None = None
    ) -> TokenAccount:
        """Return the user's account, creating it with these settings if it is missing.

        An existing account is returned as stored: its limit is not changed.
        """
        account = self._new_account(user_id, monthly_limit, reset_anchor)
        with self.repository.unit_of_work() as work:
            if work.insert_account(account):
                return account
            existing = work.load_account(user_id)
        if existing is None:  # pragma: no cover - insert refused, so the row exists
            raise AccountNotFound(user_id)
        return existing

    def get_account(self, user_id: str) -> TokenAccount:
        """The account as stored, which may hold a reset that is still pending."""
        account = self.repository.get_account(_validation.identifier(user_id, "user_id"))
        if account is None:
            raise AccountNotFound(user_id)
        return account

    def status(self, user_id: str) -> TokenStatus:
        """Usage in the current period; a pending reset is shown but not written."""
        return self.ledger.status(self.get_account(user_id), self.now())

    # writes

    def deduct(
        self,
        user_id: str,
        amount: int,
        *,
        feature: str | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeductResult:
        """Spend ``amount`` tokens of the current period.

        When too few remain, the refusal is recorded as a failed entry and
        :class:`InsufficientTokens` is raised. A retry with the same
        ``idempotency_key`` returns (or raises) the original outcome and writes nothing.
        """
        _validation.identifier(user_id, "user_id")
        _validation.positive_int(amount)
        feature = _validation.optional_identifier(feature, "feature")
        key = _validation.optional_identifier(idempotency_key, "idempotency_key")
        checked_context = _validation.json_context(context)
        now = self.now()
        with self.repository.unit_of_work() as work:
            account = self._load(work, user_id)
            prior = work.find_by_idempotency_key(key) if key is not None else None
            if prior is not None:
                result = self.ledger.replay(prior, user_id, amount, feature)
            else:
                change = self.ledger.deduct(
                    account,
                    now,
                    amount,
                    feature=feature,
                    context=checked_context,
                    idempotency_key=key,
                )
                entry = self._store(work, account, change)[-1]
                result = DeductResult(entry.success, entry.balance_after, entry)
        if not result.success:
            raise InsufficientTokens(user_id, amount, result.monthly_remaining)
        return result

    def set_limit(self, user_id: str, monthly_limit: int) -> TokenAccount:
        """Change the limit now; usage in the period is kept. Recorded as ``limit_change``."""
        _validation.identifier(user_id, "user_id")
        self.ledger.check_limit(monthly_limit)
        now = self.now()
        with self.repository.unit_of_work() as work:
            account = self._load(work, user_id)
            change = self.ledger.set_limit(account, now, monthly_limit)
            self._store(work, account, change)
        return change.account

    def reset_if_needed(self, user_id: str) -> bool:
        """Persist a pending reset; the seed's ``reset_user_tokens_if_needed``."""
        _validation.identifier(user_id, "user_id")
        now = self.now()
        with self.repository.unit_of_work() as work:
            account = self._load(work, user_id)
            change = self.ledger.reset(account, now)
            self._store(work, account, change)
        return bool(change.entries)

    def reset_all_stale(self, *, batch_size: int = DEFAULT_RESET_BATCH_SIZE) -> int:
        """Persist every pending reset; the seed's ``auto_reset_monthly_tokens``.

        Works in batches of ``batch_size`` accounts, one unit of work each, so a
        large ledger is never locked whole. Returns the number of accounts reset.
        """
        _validation.positive_int(batch_size, "batch_size")
        now = self.now()
        cutoffs = StaleCutoffs(
            calendar=self.policy.period(now).start,
            anchored=now - self.policy.shortest_period,
        )
        reset_count = 0
        after: str | None = None
        while True:
            with self.repository.unit_of_work() as work:
                batch = work.lock_stale_candidates(cutoffs, after, batch_size)
                changes = [self.ledger.reset(account, now) for account in batch]
                reset = [change for change in changes if change.entries]
                work.save_accounts([change.account for change in reset])
                work.append_transactions([entry for change in reset for entry in change.entries])
            reset_count += len(reset)
            if len(batch) < batch_size:
                return reset_count
            after = batch[-1].user_id

    # reads

    def history(
        self,
        user_id: str | None = None,
        *,
        operation_type: OperationType | str | None = None,
        feature: str | None = None,
        success: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> History:
        """Ledger entries, newest first; page with ``before_id=page[-1].id``."""
        query = HistoryQuery(
            user_id=_validation.optional_identifier(user_id, "user_id"),
            operation_type=None if operation_type is None else _operation_type(operation_type),
            feature=_validation.optional_identifier(feature, "feature"),
            success=success,
            since=None if since is None else _validation.instant(since, "since"),
            until=None if until is None else _validation.instant(until, "until"),
            before_id=None
            if before_id is None
            else _validation.positive_int(before_id, "before_id"),
            limit=_history_limit(limit),
        )
        return History(self.repository.history(query))

    # helpers

    def _new_account(
        self, user_id: str, monthly_limit: int, reset_anchor: datetime | None
    ) -> TokenAccount:
        _validation.identifier(user_id, "user_id")
        self.ledger.check_limit(monthly_limit)
        anchor = None if reset_anchor is None else _validation.instant(reset_anchor, "reset_anchor")
        return self.ledger.open(user_id, monthly_limit, self.now(), anchor)

    @staticmethod
    def _load(work: UnitOfWork, user_id: str) -> TokenAccount:
        account = work.load_account(user_id)
        if account is None:
            raise AccountNotFound(user_id)
        return account

    @staticmethod
    def _store(work: UnitOfWork, before: TokenAccount, change: Change) -> list[Transaction]:
        if change.account != before:
            work.save_accounts([change.account])
        return work.append_transactions(change.entries)


def _operation_type(value: OperationType | str) -> OperationType:
    try:
        return OperationType(value)
    except ValueError as error:
        known = ", ".join(member.value for member in OperationType)
        raise InvalidInput(f"operation_type must be one of {known}, got {value!r}") from error


def _history_limit(limit: object) -> int:
    value = _validation.positive_int(limit, "limit")
    if value > MAX_HISTORY_LIMIT:
        raise InvalidInput(f"limit must be at most {MAX_HISTORY_LIMIT}, got {value}")
    return value


def _optional_positive(value: object, name: str) -> int | None:
    return None if value is None else _validation.positive_int(value, name)
