"""Every call of a synchronous ledger, written once.

:class:`~token_ledger.TokenLedger` and :class:`~token_ledger.within.LedgerInTransaction`
(the ledger inside a transaction the caller owns) offer the same calls with the same
arguments and answers; they differ only in how they run a checked command
(``_perform``: a unit of work with retries, or a savepoint of the caller's transaction).
Each call here asks :mod:`token_ledger.commands` for its command, once, for both.
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


class LedgerCalls:
    """The public calls of a synchronous ledger, each one checked command run by ``_perform``."""

    if TYPE_CHECKING:
        policy: MonthlyResetPolicy
        thresholds: tuple[Threshold, ...]

        def now(self) -> datetime: ...

        def _perform(self, command: Command[T, R]) -> R: ...

    # accounts

    def open_account(
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
        """Create the user's account; :class:`AccountExists` if there is one already.

        ``time_zone`` (an IANA name) gives the account a calendar of its own; ``None``
        follows the policy's. ``rollover_cap`` is how much unspent allowance carries
        into the next period (default: the policy's ``rollover_cap``).
        """
        return self._perform(
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

    def ensure_account(
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
        """Return the user's account, creating it with these settings if it is missing.

        An existing account is returned as stored: its limit is not changed.
        """
        return self._perform(
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

    def get_account(self, user_id: str) -> TokenAccount:
        """The account as stored, which may hold a reset that is still pending."""
        return self._perform(commands.get_account(user_id))

    def status(self, user_id: str) -> TokenStatus:
        """Usage in the current period; a pending reset is shown but not written."""
        return self._perform(commands.status(self.policy, self.now(), user_id))

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
        return self._perform(
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

    def set_limit(
        self,
        user_id: str,
        monthly_limit: int | None = None,
        *,
        overage_limit: int | None = None,
        rollover_cap: int | None = None,
    ) -> TokenAccount:
        """Change the monthly limit, the overage limit and/or the rollover cap now; usage
        is kept.

        A downgrade below what was already used leaves nothing remaining, never
        a negative balance. Recorded as a ``limit_change`` entry.
        """
        return self._perform(
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

    def set_time_zone(self, user_id: str, time_zone: str | None) -> TokenAccount:
        """Count the account's calendar in ``time_zone`` from now on (``None``: the policy's).

        The period in progress keeps its usage and ends at the new zone's next
        boundary; recorded as a ``limit_change`` entry.
        """
        return self._perform(commands.set_time_zone(self.policy, self.now(), user_id, time_zone))

    def move_to_organisation(self, user_id: str, organisation_id: str | None) -> TokenAccount:
        """Make the account a member of ``organisation_id`` from now on (``None``: of none).

        Its spending from then on must fit the organisation's budget too, and is recorded
        against it; what it spent before stays spent, and refunded, where it was. Refused
        while it holds reservations (:class:`ReservationsHeld`), or when the organisation
        is one of its own members or the path would pass ``MAX_DEPTH`` accounts
        (:class:`InvalidInput`). Recorded as a ``limit_change`` entry.
        """
        return self._perform(
            commands.move_to_organisation(self.policy, self.now(), user_id, organisation_id)
        )

    def set_window_caps(self, user_id: str, window_caps: Mapping[str, int] | None) -> TokenAccount:
        """Cap what the account may spend per ``"hour"``, ``"day"`` and/or ``"week"``, in its
        own zone, within its period: ``{"day": 1000}``; ``None`` or ``{}`` for no caps.

        A window that stays keeps what it has used; recorded as a ``limit_change`` entry.
        A cap lowered to what its window used leaves nothing: thresholds that this
        reaches are notified, as for a lowered limit.
        """
        return self._perform(
            commands.set_window_caps(self.policy, self.now(), user_id, window_caps, self.thresholds)
        )

    def set_thresholds(self, user_id: str, thresholds: Iterable[Threshold] | None) -> TokenAccount:
        """Give the account notification thresholds of its own, in place of the ledger's
        defaults; ``[]`` for none, ``None`` to go back to the defaults.

        Nothing fires for a threshold the account is already at or above: the next crossing
        does, after a new period or a refund arms it.
        """
        return self._perform(commands.set_thresholds(self.policy, self.now(), user_id, thresholds))

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
    ) -> Transaction:
        """Add tokens that do not reset monthly (a purchase, a promotion).

        They are spent after the monthly allowance: lowest ``priority`` first, then
        soonest expiry, then oldest; and stop counting at ``expires_at``. Returns the
        ``grant`` entry; its ``reference`` is the grant's id.
        """
        return self._perform(
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

    def void_grant(
        self,
        grant_id: str,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        """Take back what is left of a grant (a charge-back, a mistake), for good.

        Returns the ``void`` entry; a refund never brings back what it paid for.
        :class:`GrantNotFound` for an unknown id, :class:`GrantVoided` the second time.
        """
        return self._perform(
            commands.void_grant(
                self.policy,
                self.now(),
                grant_id,
                reason=reason,
                idempotency_key=idempotency_key,
                thresholds=self.thresholds,
            )
        )

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
        return self._perform(
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

    def commit(self, reservation_id: str, actual_amount: int) -> DeductResult:
        """Spend ``actual_amount`` (at most what was reserved) and release the rest."""
        return self._perform(
            commands.commit(self.policy, self.now(), reservation_id, actual_amount, self.thresholds)
        )

    def release(self, reservation_id: str) -> DeductResult:
        """Give a hold back whole, spending nothing."""
        return self._perform(commands.release(self.policy, self.now(), reservation_id))

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
        return self._perform(
            commands.refund(
                self.policy,
                self.now(),
                transaction_id,
                amount,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    def reset_if_needed(self, user_id: str) -> bool:
        """Persist a pending reset; the seed's ``reset_user_tokens_if_needed``."""
        return self._perform(commands.reset_if_needed(self.policy, self.now(), user_id))

    # operations

    def health(self) -> Health:
        """The guide's health check: every account should be in the current period."""
        return self._perform(commands.health(self.policy, self.now()))

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
        return self._perform(
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

    def reconcile(self, user_id: str | None = None) -> list[Discrepancy]:
        """Recompute balances from the ledger and list where the stored ones differ.

        Checks one user's account, or every account. Each entry records its
        effect on usage, grants and holds, so the log alone must add up to what
        ``user_tokens``, ``token_grants`` and ``token_reservations`` hold. An
        empty list means the ledger is consistent.
        """
        return self._perform(commands.reconcile(user_id))

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
        return self._perform(
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

    def usage(
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
        return self._perform(
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

    def notifications(self, *, after: int = 0, limit: int = 100) -> list[Notification]:
        """Notifications of crossed thresholds with an id above ``after``, oldest first.

        Ids grow in the order notifications are committed, so passing the last id seen
        as ``after`` never skips one. To resume after a restart, keep the position in the
        ledger: :meth:`notification_cursor` and :meth:`acknowledge_notifications`.
        """
        return self._perform(commands.notifications(after, limit))

    def notification_cursor(self, consumer: str) -> int:
        """The id ``consumer`` last acknowledged (0 at first): read on from there."""
        return self._perform(commands.notification_cursor(consumer))

    def acknowledge_notifications(self, consumer: str, up_to: int) -> int:
        """Record that ``consumer`` has handled every notification up to id ``up_to``.

        The cursor never moves back (an older id leaves it as it is), and never past the
        last notification recorded (:class:`InvalidInput`). Returns where it stands.
        """
        return self._perform(commands.acknowledge_notifications(consumer, up_to))
