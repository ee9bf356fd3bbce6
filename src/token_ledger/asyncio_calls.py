"""Every call of the asyncio ledger, written once: :class:`~token_ledger.calls.LedgerCalls`'
twins, each a coroutine awaiting the same checked command.

Kept apart from :class:`~token_ledger.AsyncTokenLedger`, which only says where it
stores (its constructors) and how a command runs (``_perform``), as
:class:`~token_ledger.TokenLedger` does for the synchronous calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from token_ledger import commands
from token_ledger.account import TokenAccount
from token_ledger.commands import DEFAULT_RESERVATION_TTL
from token_ledger.grants import Reservation
from token_ledger.monitoring import AlertReport, Health
from token_ledger.reconciliation import Discrepancy
from token_ledger.results import DeductResult, History, TokenStatus
from token_ledger.thresholds import Notification, Threshold
from token_ledger.transactions import OperationType, Transaction
from token_ledger.usage import UsageReport

if TYPE_CHECKING:
    from token_ledger.commands import Command
    from token_ledger.policy import MonthlyResetPolicy

T = TypeVar("T")
R = TypeVar("R")


class AsyncLedgerCalls:
    """The public calls of the asyncio ledger, each one checked command awaited by ``_perform``."""

    if TYPE_CHECKING:
        policy: MonthlyResetPolicy
        thresholds: tuple[Threshold, ...]

        def now(self) -> datetime: ...

        async def _perform(self, command: Command[T, R]) -> R: ...

    # accounts

    async def open_account(
        self,
        user_id: str,
        monthly_limit: int,
        *,
        reset_anchor: datetime | None = None,
        time_zone: str | None = None,
        rollover_cap: int | None = None,
        organisation_id: str | None = None,
        window_caps: Mapping[str, int] | None = None,
    ) -> TokenAccount:
        """Create the user's account; :class:`AccountExists` if there is one already."""
        return await self._perform(
            commands.open_account(
                self.policy,
                self.now(),
                user_id,
                monthly_limit,
                reset_anchor,
                time_zone,
                rollover_cap,
                organisation_id,
                window_caps,
            )
        )

    async def ensure_account(
        self,
        user_id: str,
        monthly_limit: int,
        *,
        reset_anchor: datetime | None = None,
        time_zone: str | None = None,
        rollover_cap: int | None = None,
        organisation_id: str | None = None,
        window_caps: Mapping[str, int] | None = None,
    ) -> TokenAccount:
        """Return the user's account, creating it with these settings if it is missing."""
        return await self._perform(
            commands.ensure_account(
                self.policy,
                self.now(),
                user_id,
                monthly_limit,
                reset_anchor,
                time_zone,
                rollover_cap,
                organisation_id,
                window_caps,
            )
        )

    async def get_account(self, user_id: str) -> TokenAccount:
        """The account as stored, which may hold a reset that is still pending."""
        return await self._perform(commands.get_account(user_id))

    async def status(self, user_id: str) -> TokenStatus:
        """Usage in the current period; a pending reset is shown but not written."""
        return await self._perform(commands.status(self.policy, self.now(), user_id))

    # writes

    async def deduct(
        self,
        user_id: str,
        amount: int,
        *,
        feature: str | None = None,
        context: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeductResult:
        """Spend ``amount`` tokens; see :meth:`TokenLedger.deduct`."""
        return await self._perform(
            commands.deduct(
                self.policy,
                self.now(),
                user_id,
                amount,
                feature=feature,
                context=context,
                idempotency_key=idempotency_key,
                thresholds=self.thresholds,
            )
        )

    async def set_limit(
        self,
        user_id: str,
        monthly_limit: int | None = None,
        *,
        overage_limit: int | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Change any of the limits, now; see :meth:`TokenLedger.set_limit`."""
        return await self._perform(
            commands.set_limit(
                self.policy,
                self.now(),
                user_id,
                monthly_limit,
                overage_limit,
                rollover_cap,
                self.thresholds,
            )
        )

    async def set_time_zone(self, user_id: str, time_zone: str | None) -> TokenAccount:
        """Count the account's calendar in ``time_zone``; see :meth:`TokenLedger.set_time_zone`."""
        return await self._perform(
            commands.set_time_zone(self.policy, self.now(), user_id, time_zone)
        )

    async def move_to_organisation(self, user_id: str, organisation_id: str | None) -> TokenAccount:
        """Make the account a member of ``organisation_id`` from now on (``None``: of none).

        Its spending from then on must fit the organisation's budget too, and is recorded
        against it; what it spent before stays spent, and refunded, where it was. Refused
        while it holds reservations (:class:`ReservationsHeld`), or when the organisation
        is one of its own members or the path would pass ``MAX_DEPTH`` accounts
        (:class:`InvalidInput`). Recorded as a ``limit_change`` entry.
        """
        return await self._perform(
            commands.move_to_organisation(self.policy, self.now(), user_id, organisation_id)
        )

    async def set_window_caps(
        self, user_id: str, window_caps: Mapping[str, int] | None
    ) -> TokenAccount:
        """Cap what the account may spend per ``"hour"``, ``"day"`` and/or ``"week"``, in its
        own zone, within its period: ``{"day": 1000}``; ``None`` or ``{}`` for no caps.

        A window that stays keeps what it has used; recorded as a ``limit_change`` entry.
        A cap lowered to what its window used leaves nothing: thresholds that this
        reaches are notified, as for a lowered limit.
        """
        return await self._perform(
            commands.set_window_caps(self.policy, self.now(), user_id, window_caps, self.thresholds)
        )

    async def set_thresholds(
        self, user_id: str, thresholds: Iterable[Threshold] | None
    ) -> TokenAccount:
        """The account's own thresholds (``None``: the defaults); see
        :meth:`TokenLedger.set_thresholds`."""
        return await self._perform(
            commands.set_thresholds(self.policy, self.now(), user_id, thresholds)
        )

    async def grant(
        self,
        user_id: str,
        amount: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Transaction:
        """Add tokens that do not reset monthly; see :meth:`TokenLedger.grant`."""
        return await self._perform(
            commands.grant(
                self.policy,
                self.now(),
                user_id,
                amount,
                expires_at=expires_at,
                reason=reason,
                idempotency_key=idempotency_key,
                priority=priority,
            )
        )

    async def void_grant(
        self,
        grant_id: str,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Take back what is left of a grant, for good; see :meth:`TokenLedger.void_grant`."""
        return await self._perform(
            commands.void_grant(
                self.policy,
                self.now(),
                grant_id,
                reason=reason,
                idempotency_key=idempotency_key,
                thresholds=self.thresholds,
            )
        )

    async def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        ttl: timedelta = DEFAULT_RESERVATION_TTL,
        feature: str | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold ``amount`` tokens for work whose cost is known only afterwards."""
        return await self._perform(
            commands.reserve(
                self.policy,
                self.now(),
                user_id,
                amount,
                ttl=ttl,
                feature=feature,
                idempotency_key=idempotency_key,
                thresholds=self.thresholds,
            )
        )

    async def commit(self, reservation_id: str, actual_amount: int) -> DeductResult:
        """Spend ``actual_amount`` (at most what was reserved) and release the rest."""
        return await self._perform(
            commands.commit(self.policy, self.now(), reservation_id, actual_amount, self.thresholds)
        )

    async def release(self, reservation_id: str) -> DeductResult:
        """Give a hold back whole, spending nothing."""
        return await self._perform(commands.release(self.policy, self.now(), reservation_id))

    async def refund(
        self,
        transaction_id: int,
        amount: int | None = None,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Reverse all (by default) or part of a deduction; see :meth:`TokenLedger.refund`."""
        return await self._perform(
            commands.refund(
                self.policy,
                self.now(),
                transaction_id,
                amount,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    async def reset_if_needed(self, user_id: str) -> bool:
        """Persist a pending reset; the seed's ``reset_user_tokens_if_needed``."""
        return await self._perform(commands.reset_if_needed(self.policy, self.now(), user_id))

    # operations

    async def health(self) -> Health:
        """The guide's health check: every account should be in the current period."""
        return await self._perform(commands.health(self.policy, self.now()))

    async def alerts(
        self,
        *,
        stale_after: timedelta = timedelta(days=1),
        stale_threshold: int = 0,
        failed_window: timedelta = timedelta(hours=1),
        failed_threshold: int = 10,
        usage_ratio: float = 0.9,
        high_usage_threshold: int | None = None,
    ) -> AlertReport:
        """The guide's three monitoring alerts; see :meth:`TokenLedger.alerts`."""
        return await self._perform(
            commands.alerts(
                self.policy,
                self.now(),
                stale_after=stale_after,
                stale_threshold=stale_threshold,
                failed_window=failed_window,
                failed_threshold=failed_threshold,
                usage_ratio=usage_ratio,
                high_usage_threshold=high_usage_threshold,
            )
        )

    async def reconcile(self, user_id: str | None = None) -> list[Discrepancy]:
        """Where stored balances differ from what the entries add up to; [] when none."""
        return await self._perform(commands.reconcile(user_id))

    # reads

    async def history(
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
        return await self._perform(
            commands.history(
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
        )

    async def usage(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: str | Sequence[str] = (),
        user_id: str | None = None,
        feature: str | None = None,
        time_zone: str | None = None,
        organisation: str | None = None,
    ) -> UsageReport:
        """Tokens spent net of refunds from ``since`` (inclusive) to ``until`` (exclusive),
        grouped ``by`` any of ``"user"``, ``"feature"`` and ``"day"`` or ``"month"``.

        Counts successful deductions and commits, less refunds, each when it was made;
        days and months are local to ``time_zone`` (default: the policy's). The database
        adds the entries up in one grouped query (inside a transaction of yours, its own
        entries included). Rows come ordered by day or month, then ``user_id``, then
        ``feature``; see :class:`~token_ledger.usage.UsageRow`.

        Tokens count once, for the account that spent them. ``organisation`` reports what
        that organisation's budget paid instead: its own spending and its shares of its
        members' (by ``"user"``: per member, as they were members then).
        """
        return await self._perform(
            commands.usage(
                self.policy,
                since=since,
                until=until,
                by=by,
                user_id=user_id,
                feature=feature,
                time_zone=time_zone,
                organisation=organisation,
            )
        )

    # notifications

    async def notifications(self, *, after: int = 0, limit: int = 100) -> list[Notification]:
        """Notifications with an id above ``after``, oldest first; see
        :meth:`TokenLedger.notifications`."""
        return await self._perform(commands.notifications(after, limit))

    async def notification_cursor(self, consumer: str) -> int:
        """The id ``consumer`` last acknowledged (0 at first)."""
        return await self._perform(commands.notification_cursor(consumer))

    async def acknowledge_notifications(self, consumer: str, up_to: int) -> int:
        """Record that ``consumer`` handled every notification up to id ``up_to``; see
        :meth:`TokenLedger.acknowledge_notifications`."""
        return await self._perform(commands.acknowledge_notifications(consumer, up_to))
