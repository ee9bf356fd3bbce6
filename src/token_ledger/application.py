"""``TokenLedger``: the domain, a repository and a clock, wired into one object."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from token_ledger import _validation, monitoring, operations
from token_ledger.account import TokenAccount, check_monthly_limit
from token_ledger.clock import Clock, system_clock
from token_ledger.errors import AccountNotFound, InsufficientTokens, InvalidAmount, InvalidInput
from token_ledger.grants import Grant, Reservation
from token_ledger.memory import MemoryRepository
from token_ledger.monitoring import AlertReport, AlertThresholds, Health
from token_ledger.operations import Operation
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.reconciliation import Discrepancy, reconcile_account
from token_ledger.repository import (
    MAX_HISTORY_LIMIT,
    AccountFilter,
    HistoryQuery,
    StaleCutoffs,
    TokenRepository,
)
from token_ledger.results import DeductResult, History, TokenStatus
from token_ledger.storage import paged, write_with_retries
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from types import TracebackType

    import sqlite_utils

    from token_ledger.postgres import PostgresTarget

DEFAULT_RESET_BATCH_SIZE = 1000
DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
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
        return self._write(lambda: operations.open_account(account))

    def ensure_account(
        self, user_id: str, monthly_limit: int, *, reset_anchor: datetime | None = None
    ) -> TokenAccount:
        """Return the user's account, creating it with these settings if it is missing.

        An existing account is returned as stored: its limit is not changed.
        """
        account = self._new_account(user_id, monthly_limit, reset_anchor)
        return self._write(lambda: operations.ensure_account(account))

    def get_account(self, user_id: str) -> TokenAccount:
        """The account as stored, which may hold a reset that is still pending."""
        account = self.repository.get_account(_validation.identifier(user_id, "user_id"))
        if account is None:
            raise AccountNotFound(user_id)
        return account

    def status(self, user_id: str) -> TokenStatus:
        """Usage in the current period; a pending reset is shown but not written."""
        return TokenStatus.of(self.get_account(user_id), self.policy, self.now())

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
        spent = self._write(
            lambda: operations.deduct(
                self.policy,
                now,
                user_id,
                amount,
                feature=feature,
                context=checked_context,
                idempotency_key=key,
            )
        )
        return _deducted(spent)

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
            check_monthly_limit(monthly_limit)
        if overage_limit is not None:
            _validation.non_negative_int(overage_limit, "overage_limit")
        now = self.now()
        return self._write(
            lambda: operations.set_limits(self.policy, now, user_id, monthly_limit, overage_limit)
        )

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
        offered = Grant.offered(operations.new_id(), user_id, amount, now, expiry, reason)
        return self._write(lambda: operations.grant(self.policy, now, offered, key))

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
        hold = Reservation(operations.new_id(), user_id, amount, now, expiry, feature=feature)
        spent = self._write(lambda: operations.reserve(self.policy, now, hold, key))
        if not spent.entry.success or spent.reservation is None:
            raise InsufficientTokens(user_id, amount, spent.remaining)
        return spent.reservation

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
        return self._write(
            lambda: operations.refund(
                self.policy, now, transaction_id, amount, reason=reason, idempotency_key=key
            )
        )

    def reset_if_needed(self, user_id: str) -> bool:
        """Persist a pending reset; the seed's ``reset_user_tokens_if_needed``."""
        _validation.identifier(user_id, "user_id")
        now = self.now()
        return self._write(lambda: operations.reset(self.policy, now, user_id))

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
        while True:
            batch, batch_resets = self._write(
                functools.partial(
                    operations.reset_batch, self.policy, now, cutoffs, after, batch_size
                )
            )
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
        return monitoring.health(total, self._count_behind(now), now)

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
        watches it, so by default it has no threshold). See :class:`AlertThresholds`.
        """
        now = self.now()
        thresholds = AlertThresholds(
            stale_after=stale_after,
            stale_threshold=stale_threshold,
            failed_window=failed_window,
            failed_threshold=failed_threshold,
            usage_ratio=usage_ratio,
            high_usage_threshold=high_usage_threshold,
        )
        overdue = self._count_behind(thresholds.stale_at(now))
        refused = HistoryQuery(success=False, since=thresholds.failed_since(now))
        failed = self.repository.count_transactions(refused)
        high = sum(
            1
            for account in self._scan(AccountFilter(usage_above=float(thresholds.usage_ratio)))
            if not account.is_stale(self.policy, now)
        )
        return monitoring.alerts(thresholds, overdue, failed, high, now)

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
        return paged(
            lambda after: self.repository.scan_accounts(where, after, SCAN_PAGE_SIZE),
            lambda account: account.user_id,
            SCAN_PAGE_SIZE,
        )

    def _all_entries(self, user_id: str) -> Iterator[Transaction]:
        return paged(
            lambda before: self.repository.history(
                HistoryQuery(user_id=user_id, before_id=before, limit=MAX_HISTORY_LIMIT)
            ),
            lambda entry: entry.id,
            MAX_HISTORY_LIMIT,
        )

    def _stale_cutoffs(self, now: datetime) -> StaleCutoffs:
        return StaleCutoffs(
            calendar=self.policy.period(now).start,
            anchored=now - self.policy.shortest_period,
        )

    def _count_behind(self, at: datetime) -> int:
        """How many accounts had a reset pending at ``at``."""
        candidates = self._scan(AccountFilter(stale=self._stale_cutoffs(at)))
        return sum(1 for account in candidates if account.is_stale(self.policy, at))

    def _new_account(
        self, user_id: str, monthly_limit: int, reset_anchor: datetime | None
    ) -> TokenAccount:
        _validation.identifier(user_id, "user_id")
        check_monthly_limit(monthly_limit)
        anchor = _validation.optional_instant(reset_anchor, "reset_anchor")
        return TokenAccount.open(user_id, monthly_limit, self.policy, self.now(), anchor)

    def _write(self, operation: Callable[[], Operation[T]]) -> T:
        """Run a fresh ``operation()`` in a unit of work, again from the start if it lost a race."""
        return write_with_retries(self.repository, lambda work: operations.run(operation(), work))

    def _settle(self, reservation_id: str, actual: int | None) -> DeductResult:
        _validation.identifier(reservation_id, "reservation_id")
        now = self.now()
        return _deducted(
            self._write(lambda: operations.settle(self.policy, now, reservation_id, actual))
        )


def _deducted(spent: operations.Spent) -> DeductResult:
    """The result of a spending write, or the refusal its failed entry records."""
    entry = spent.entry
    if not entry.success:
        raise InsufficientTokens(entry.user_id, entry.amount, spent.remaining)
    return DeductResult(True, entry.balance_after, entry)
