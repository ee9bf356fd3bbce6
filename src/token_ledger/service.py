"""``TokenLedger``: the domain, a repository and a clock, wired into one object."""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from token_ledger import _validation
from token_ledger.account import Change, TokenAccount
from token_ledger.clock import Clock, system_clock
from token_ledger.errors import (
    AccountExists,
    AccountNotFound,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    ReservationClosed,
    ReservationNotFound,
    TransactionNotFound,
    TransientStorageError,
)
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.ledger import DeductResult, History, Ledger, TokenStatus
from token_ledger.memory import MemoryRepository
from token_ledger.monitoring import Alert, AlertReport, Health
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.reconciliation import Discrepancy, reconcile_account
from token_ledger.repository import (
    MAX_HISTORY_LIMIT,
    AccountFilter,
    HistoryQuery,
    StaleCutoffs,
    TokenRepository,
    UnitOfWork,
)
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from types import TracebackType

    import sqlite_utils

    from token_ledger.postgres import PostgresTarget

DEFAULT_RESET_BATCH_SIZE = 1000
DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
WRITE_ATTEMPTS = 10
RETRY_BASE_DELAY = 0.005
RETRY_MAX_DELAY = 0.5
SCAN_PAGE_SIZE = 1000

T = TypeVar("T")


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

    @classmethod
    def postgres(
        cls,
        target: PostgresTarget,
        *,
        schema: str = "public",
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
    ) -> TokenLedger:
        """A ledger in PostgreSQL, shared by every process that points at the same schema.

        ``target`` is a connection URL (a small pool is made and closed with the
        ledger), a ``psycopg.Connection`` or a ``psycopg_pool.ConnectionPool``
        (both stay yours to close); see :class:`~token_ledger.postgres.PostgresRepository`.
        """
        from token_ledger.postgres import PostgresRepository

        return cls(PostgresRepository(target, schema=schema), policy=policy, clock=clock)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        create: bool = True,
        policy: MonthlyResetPolicy | None = None,
        clock: Clock = system_clock,
    ) -> TokenLedger:
        """The ledger a database URL names: ``postgresql://...``, ``sqlite:///path``, a SQLite
        file path, or ``memory://``; see :func:`token_ledger.database_url.parse_database_url`.

        ``create=False`` refuses a SQLite file that does not exist yet, where a mistyped
        path would otherwise open a new, empty ledger.
        """
        from token_ledger.database_url import open_ledger

        return open_ledger(cls, url, create=create, policy=policy, clock=clock)

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

        def insert(work: UnitOfWork) -> None:
            if not work.insert_account(account):
                raise AccountExists(user_id)

        self._write(insert)
        return account

    def ensure_account(
        self, user_id: str, monthly_limit: int, *, reset_anchor: datetime | None = None
    ) -> TokenAccount:
        """Return the user's account, creating it with these settings if it is missing.

        An existing account is returned as stored: its limit is not changed.
        """
        account = self._new_account(user_id, monthly_limit, reset_anchor)

        def insert_or_load(work: UnitOfWork) -> TokenAccount:
            if work.insert_account(account):
                return account
            return self._load(work, user_id)

        return self._write(insert_or_load)

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
        """Spend ``amount`` tokens: the monthly allowance first, then grants, then overage.

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

        def spend(work: UnitOfWork) -> tuple[Transaction, int]:
            account = self._load(work, user_id)
            prior = work.find_by_idempotency_key(key) if key is not None else None
            if prior is not None:
                entry = self.ledger.replay(prior, OperationType.DEDUCT, user_id, amount, feature)
                return entry, entry.balance_after
            change = self.ledger.deduct(
                account,
                now,
                amount,
                feature=feature,
                context=checked_context,
                idempotency_key=key,
            )
            return self._store(work, account, change)[-1], change.account.spendable

        entry, remaining = self._write(spend)
        if not entry.success:
            raise InsufficientTokens(user_id, amount, remaining)
        return DeductResult(entry.success, entry.balance_after, entry)

    def set_limit(
        self,
        user_id: str,
        monthly_limit: int | None = None,
        *,
        overage_limit: int | None = None,
    ) -> TokenAccount:
        """Change the monthly limit and/or the overage limit now; usage is kept.

        A downgrade below what was already used leaves nothing remaining, never
        a negative balance. Recorded as a ``limit_change`` entry.
        """
        _validation.identifier(user_id, "user_id")
        if monthly_limit is None and overage_limit is None:
            raise InvalidAmount("set_limit needs a monthly_limit, an overage_limit, or both")
        if monthly_limit is not None:
            self.ledger.check_limit(monthly_limit)
        if overage_limit is not None:
            _validation.non_negative_int(overage_limit, "overage_limit")
        now = self.now()

        def change_limits(work: UnitOfWork) -> TokenAccount:
            account = self._load(work, user_id)
            change = self.ledger.set_limits(
                account,
                now,
                account.monthly_limit if monthly_limit is None else monthly_limit,
                account.overage_limit if overage_limit is None else overage_limit,
            )
            self._store(work, account, change)
            return change.account

        return self._write(change_limits)

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Add tokens that do not reset monthly (a purchase, a promotion).

        They are spent after the monthly allowance, soonest expiry first, and
        stop counting at ``expires_at``. Returns the ``grant`` entry; its
        ``reference`` is the grant's id.
        """
        _validation.identifier(user_id, "user_id")
        _validation.positive_int(amount)
        reason = _validation.optional_text(reason, "reason")
        key = _validation.optional_identifier(idempotency_key, "idempotency_key")
        now = self.now()
        expiry = _validation.optional_instant(expires_at, "expires_at")
        if expiry is not None and expiry <= now:
            raise InvalidInput(f"expires_at must be in the future, got {expiry.isoformat()}")

        def add_grant(work: UnitOfWork) -> Transaction:
            account = self._load(work, user_id)
            prior = work.find_by_idempotency_key(key) if key is not None else None
            if prior is not None:
                return self.ledger.replay(prior, OperationType.GRANT, user_id, amount)
            grant = Grant(_new_id(), user_id, amount, amount, now, expiry, reason)
            change = self.ledger.grant(account, now, grant, key)
            return self._store(work, account, change)[-1]

        return self._write(add_grant)

    def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        ttl: timedelta = DEFAULT_RESERVATION_TTL,
        feature: str | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` tokens for work whose cost is known only afterwards.

        Held tokens are unavailable to other deductions until :meth:`commit`,
        :meth:`release`, or ``ttl`` passes (the hold then releases itself at
        the next write). A hold survives a period reset: it is committed
        against the period it is committed in.
        """
        _validation.identifier(user_id, "user_id")
        _validation.positive_int(amount)
        feature = _validation.optional_identifier(feature, "feature")
        key = _validation.optional_identifier(idempotency_key, "idempotency_key")
        now = self.now()
        expiry = _validation.instant_after(now, ttl, "ttl")

        def hold_tokens(work: UnitOfWork) -> tuple[Transaction, int, Reservation | None]:
            account = self._load(work, user_id)
            prior = work.find_by_idempotency_key(key) if key is not None else None
            if prior is not None:
                entry = self.ledger.replay(prior, OperationType.RESERVE, user_id, amount, feature)
                remaining = entry.balance_after
            else:
                hold = Reservation(_new_id(), user_id, amount, now, expiry, feature=feature)
                change = self.ledger.reserve(account, now, hold, key)
                entry = self._store(work, account, change)[-1]
                remaining = change.account.spendable
            stored = work.find_reservation(entry.reference) if entry.reference else None
            return entry, remaining, stored

        entry, remaining, reservation = self._write(hold_tokens)
        if not entry.success or reservation is None:
            raise InsufficientTokens(user_id, amount, remaining)
        return reservation

    def commit(self, reservation_id: str, actual_amount: int) -> DeductResult:
        """Spend ``actual_amount`` (at most what was reserved) and release the rest."""
        _validation.non_negative_int(actual_amount, "actual_amount")
        return self._settle(reservation_id, actual_amount)

    def release(self, reservation_id: str) -> DeductResult:
        """Give a hold back whole, spending nothing."""
        return self._settle(reservation_id, None)

    def refund(
        self,
        transaction_id: int,
        amount: int | None = None,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Reverse all (by default) or part of a successful deduction.

        Never more than is left of it after earlier refunds. Tokens return to
        this period's usage and to the grants the deduction drew on; a
        deduction of an ended period (or a grant since expired) is refunded as
        a new grant that never expires, since that allowance cannot be spent
        any more. Returns the ``refund`` entry.
        """
        _validation.positive_int(transaction_id, "transaction_id")
        if amount is not None:
            _validation.positive_int(amount)
        reason = _validation.optional_text(reason, "reason")
        key = _validation.optional_identifier(idempotency_key, "idempotency_key")
        now = self.now()

        def give_back(work: UnitOfWork) -> Transaction:
            spent = work.find_transaction(transaction_id)
            if spent is None:
                raise TransactionNotFound(transaction_id)
            account = self._load(work, spent.user_id)
            prior = work.find_by_idempotency_key(key) if key is not None else None
            if prior is not None:
                return self.ledger.replay(
                    prior, OperationType.REFUND, spent.user_id, amount, spent.feature
                )
            earlier = [
                entry
                for entry in work.entries_referencing(str(transaction_id))
                if entry.operation_type is OperationType.REFUND
            ]
            change = self.ledger.refund(
                account,
                now,
                spent,
                earlier,
                amount,
                credit_grant_id=_new_id(),
                reason=reason,
                idempotency_key=key,
            )
            return self._store(work, account, change)[-1]

        return self._write(give_back)

    def reset_if_needed(self, user_id: str) -> bool:
        """Persist a pending reset; the seed's ``reset_user_tokens_if_needed``."""
        _validation.identifier(user_id, "user_id")
        now = self.now()

        def reset(work: UnitOfWork) -> bool:
            account = self._load(work, user_id)
            change = self.ledger.reset(account, now)
            self._store(work, account, change)
            return _has_reset(change)

        return self._write(reset)

    def reset_all_stale(
        self,
        *,
        batch_size: int = DEFAULT_RESET_BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Persist every pending reset; the seed's ``auto_reset_monthly_tokens``.

        Works in batches of ``batch_size`` accounts, one unit of work each, so a
        large ledger is never locked whole. Returns the number of accounts reset.
        ``progress`` is called with the running count after each batch commits,
        for a progress bar on a large ledger.
        """
        _validation.positive_int(batch_size, "batch_size")
        if progress is not None and not callable(progress):
            raise InvalidInput(f"progress must be a callable or None, got {progress!r}")
        now = self.now()
        cutoffs = self._stale_cutoffs(now)
        reset_count = 0
        after: str | None = None

        def reset_batch(after: str | None, work: UnitOfWork) -> tuple[list[TokenAccount], int]:
            batch = work.lock_stale_candidates(cutoffs, after, batch_size)
            changes = [self.ledger.reset(account, now) for account in batch]
            changed = [change for change in changes if change.entries]
            work.save_accounts([change.account for change in changed])
            work.save_grants([grant for change in changed for grant in change.grants])
            work.save_reservations([r for change in changed for r in change.reservations])
            work.append_transactions([e for change in changed for e in change.entries])
            return batch, sum(1 for change in changed if _has_reset(change))

        while True:
            batch, batch_resets = self._write(functools.partial(reset_batch, after))
            reset_count += batch_resets
            if progress is not None:
                progress(reset_count)
            if len(batch) < batch_size:
                return reset_count
            after = batch[-1].user_id

    # operations

    def health(self) -> Health:
        """The guide's health check: every account should be in the current period."""
        now = self.now()
        total = self.repository.count_accounts()
        stale = sum(1 for _ in self._stale_accounts(now))
        return Health(total_users=total, current=total - stale, stale=stale, checked_at=now)

    def alerts(
        self,
        *,
        stale_after: timedelta = timedelta(days=1),
        stale_threshold: int = 0,
        failed_window: timedelta = timedelta(hours=1),
        failed_threshold: int = 10,
        usage_ratio: float = 0.9,
        high_usage_threshold: int | None = None,
    ) -> AlertReport:
        """The guide's three monitoring alerts; each triggers when its value exceeds its threshold.

        ``stale_resets`` counts accounts whose reset has been pending for longer
        than ``stale_after``; ``failed_transactions`` counts refused operations in
        the last ``failed_window``; ``high_usage`` counts accounts that used more
        than ``usage_ratio`` of their limit in the current period (the guide only
        watches it, so by default it has no threshold).
        """
        now = self.now()
        _validation.non_negative_int(stale_threshold, "stale_threshold")
        _validation.non_negative_int(failed_threshold, "failed_threshold")
        if high_usage_threshold is not None:
            _validation.non_negative_int(high_usage_threshold, "high_usage_threshold")
        if isinstance(usage_ratio, bool) or not isinstance(usage_ratio, (int, float)):
            raise InvalidInput(f"usage_ratio must be a number, got {usage_ratio!r}")
        if not 0 <= usage_ratio <= 1:
            raise InvalidInput(f"usage_ratio must be between 0 and 1, got {usage_ratio}")
        stale_at = _validation.instant_before(now, stale_after, "stale_after")
        failed_since = _validation.instant_before(now, failed_window, "failed_window")

        overdue = sum(1 for _ in self._stale_accounts(stale_at))
        failed = self.repository.count_transactions(HistoryQuery(success=False, since=failed_since))
        high = sum(
            1
            for account in self._scan(AccountFilter(usage_above=float(usage_ratio)))
            if not account.as_of(self.policy, now).entries
        )
        return AlertReport(
            stale_resets=Alert(
                "stale_resets",
                overdue,
                stale_threshold,
                f"accounts whose reset has been pending for more than {_duration(stale_after)}",
            ),
            failed_transactions=Alert(
                "failed_transactions",
                failed,
                failed_threshold,
                f"refused operations in the last {_duration(failed_window)}",
            ),
            high_usage=Alert(
                "high_usage",
                high,
                high_usage_threshold,
                f"accounts above {usage_ratio:.0%} of their limit this period",
            ),
            checked_at=now,
        )

    def reconcile(self, user_id: str | None = None) -> list[Discrepancy]:
        """Recompute balances from the ledger and list where the stored ones differ.

        Checks one user's account, or every account. Each entry records its
        effect on usage, grants and holds, so the log alone must add up to what
        ``user_tokens``, ``token_grants`` and ``token_reservations`` hold. An
        empty list means the ledger is consistent.
        """
        if user_id is not None:
            accounts: Iterable[TokenAccount] = [self.get_account(user_id)]
        else:
            accounts = self._scan(AccountFilter())
        found: list[Discrepancy] = []
        for account in accounts:
            found += reconcile_account(account, self._all_entries(account.user_id))
        return found

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
        reference: str | None = None,
        limit: int = 100,
    ) -> History:
        """Ledger entries, newest first; page with ``before_id=page[-1].id``."""
        query = HistoryQuery(
            user_id=user_id,
            operation_type=operation_type,
            feature=feature,
            success=success,
            since=since,
            until=until,
            before_id=before_id,
            reference=reference,
            limit=limit,
        )
        return History(self.repository.history(query))

    # helpers

    def _scan(self, where: AccountFilter) -> Iterator[TokenAccount]:
        after: str | None = None
        while True:
            page = self.repository.scan_accounts(where, after, SCAN_PAGE_SIZE)
            yield from page
            if len(page) < SCAN_PAGE_SIZE:
                return
            after = page[-1].user_id

    def _all_entries(self, user_id: str) -> Iterator[Transaction]:
        before: int | None = None
        while True:
            page = self.repository.history(
                HistoryQuery(user_id=user_id, before_id=before, limit=MAX_HISTORY_LIMIT)
            )
            yield from page
            if len(page) < MAX_HISTORY_LIMIT:
                return
            before = page[-1].id

    def _stale_cutoffs(self, now: datetime) -> StaleCutoffs:
        return StaleCutoffs(
            calendar=self.policy.period(now).start,
            anchored=now - self.policy.shortest_period,
        )

    def _stale_accounts(self, at: datetime) -> Iterator[TokenAccount]:
        """Accounts that had a reset pending at ``at``."""
        for account in self._scan(AccountFilter(stale=self._stale_cutoffs(at))):
            if account.as_of(self.policy, at).entries:
                yield account

    def _new_account(
        self, user_id: str, monthly_limit: int, reset_anchor: datetime | None
    ) -> TokenAccount:
        _validation.identifier(user_id, "user_id")
        self.ledger.check_limit(monthly_limit)
        anchor = _validation.optional_instant(reset_anchor, "reset_anchor")
        return self.ledger.open(user_id, monthly_limit, self.now(), anchor)

    @staticmethod
    def _load(work: UnitOfWork, user_id: str) -> TokenAccount:
        account = work.load_account(user_id)
        if account is None:
            raise AccountNotFound(user_id)
        return account

    def _write(self, operation: Callable[[UnitOfWork], T]) -> T:
        """Run ``operation`` in one unit of work, from the start again if it lost a race.

        A transient failure rolled everything back, so the next attempt (with
        the same instant and idempotency key) applies the operation at most
        once. The pause is random so that the writers that collided spread out.
        """
        for attempt in range(1, WRITE_ATTEMPTS):
            try:
                with self.repository.unit_of_work() as work:
                    return operation(work)
            except TransientStorageError:
                time.sleep(random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt)))
        with self.repository.unit_of_work() as work:
            return operation(work)

    def _settle(self, reservation_id: str, actual: int | None) -> DeductResult:
        _validation.identifier(reservation_id, "reservation_id")
        now = self.now()

        def settle(work: UnitOfWork) -> tuple[Transaction, int]:
            found = work.find_reservation(reservation_id)
            if found is None:
                raise ReservationNotFound(reservation_id)
            account = self._load(work, found.user_id)
            hold = next((h for h in account.holds if h.id == reservation_id), None)
            if hold is None or not hold.is_held(now):
                status = ReservationStatus.EXPIRED if hold is not None else found.status
                raise ReservationClosed(reservation_id, str(status))
            if actual is not None and actual > hold.amount:
                raise InvalidAmount(
                    f"cannot commit {actual} tokens: reservation {reservation_id!r}"
                    f" holds {hold.amount}"
                )
            change = self.ledger.settle_hold(account, now, reservation_id, actual)
            return self._store(work, account, change)[-1], change.account.spendable

        entry, remaining = self._write(settle)
        if not entry.success:
            raise InsufficientTokens(entry.user_id, entry.amount, remaining)
        return DeductResult(True, entry.balance_after, entry)

    @staticmethod
    def _store(work: UnitOfWork, before: TokenAccount, change: Change) -> list[Transaction]:
        if change.account != before:
            work.save_accounts([change.account])
        if change.grants:
            work.save_grants(change.grants)
        if change.reservations:
            work.save_reservations(change.reservations)
        return work.append_transactions(change.entries)


def _duration(delta: timedelta) -> str:
    """``1 day``, ``1 hour``, ``90 minutes``: how an operator would say it."""
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, rest = divmod(delta.total_seconds(), seconds)
        if count and not rest:
            return f"{int(count)} {unit}{'s' if count != 1 else ''}"
    return str(delta)


def _has_reset(change: Change) -> bool:
    return any(entry.operation_type is OperationType.RESET for entry in change.entries)


def _new_id() -> str:
    return uuid.uuid4().hex
