"""Every public call of the ledger, checked and turned into an operation, once.

A facade (:class:`~token_ledger.TokenLedger`, an asyncio one, a caller's own
transaction) takes a call's arguments, asks this module for a
:class:`Command`, and runs it its own way: a write's operation in a unit of
work, a read's against the repository. The arguments are checked here,
before anything touches storage, so refused input never writes and is
refused alike whatever runs it; :attr:`Command.answer` turns the
operation's result into what the call returns, or the refusal it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import attrs

from token_ledger import _validation, operations, reads
from token_ledger.account import TokenAccount, check_monthly_limit
from token_ledger.errors import InsufficientTokens, InvalidAmount, InvalidInput
from token_ledger.grants import Grant, Reservation
from token_ledger.monitoring import AlertReport, AlertThresholds, Health
from token_ledger.operations import Operation, ResetStep, Spent
from token_ledger.policy import MonthlyResetPolicy, load_zone
from token_ledger.reconciliation import Discrepancy
from token_ledger.repository import MAX_HISTORY_LIMIT, HistoryQuery, UsageQuery
from token_ledger.results import DeductResult, History, TokenStatus
from token_ledger.thresholds import Notification, Thresholds, check_thresholds
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageReport
from token_ledger.windows import check_window_caps

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
DEFAULT_RESET_BATCH_SIZE = 1000

Batch = tuple[Sequence[TokenAccount], int]
"""The accounts a batch of the bulk reset looked at, and how many of them it reset."""


def _as_is(value: T) -> T:
    return value


@attrs.frozen
class Shortcut(Generic[T]):
    """A faster way to a command's result, through repository methods that are optional.

    ``operation`` runs against the repository (never in a unit of work) and calls
    only the repository methods ``needs`` names, which an adapter may lack: a facade
    whose repository lacks one of them, or has it set to ``None``, runs the
    command's own operation instead. So does a facade whose shortcut answered
    ``None``: the case was not one the shortcut covers. Either way the result,
    and what is stored, is the same.
    """

    needs: tuple[str, ...]
    operation: Callable[[], Operation[T | None]]
    call: operations.Call | None = None
    """The one repository call ``operation`` makes, when it makes only one: a facade may
    make it directly, without running ``operation``."""

    @classmethod
    def single(cls, call: operations.Call) -> Shortcut[Any]:
        """The shortcut of one repository method, ``call.method``, answering by itself."""
        return cls((call.method,), lambda: operations.single(call), call)

    def available(self, repository: object) -> bool:
        """Whether ``repository`` has every method the shortcut needs."""
        for name in self.needs:  # noqa: SIM110 - a loop: all() of a generator costs more here
            if getattr(repository, name, None) is None:
                return False
        return True


@attrs.frozen
class Command(Generic[T, R]):
    """A checked call: the operation to run (made afresh for each attempt) and its answer.

    ``writes`` says where the operation runs: in a unit of work, which a facade
    may run again from the start after a transient failure, or against the
    repository, as a read. ``shortcut``, when there is one, is tried first by a
    facade that knows how (see :class:`Shortcut`); one that does not may ignore it.
    """

    operation: Callable[[], Operation[T]]
    answer: Callable[[T], R]
    writes: bool = True
    shortcut: Shortcut[T] | None = None


def _write(operation: Callable[[], Operation[T]]) -> Command[T, T]:
    return Command(operation, _as_is)


def _read(operation: Callable[[], Operation[T]]) -> Command[T, T]:
    return Command(operation, _as_is, writes=False)


# accounts


def open_account(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    reset_anchor: object,
    time_zone: object = None,
    rollover_cap: object = None,
    organisation_id: object = None,
    window_caps: object = None,
) -> Command[TokenAccount, TokenAccount]:
    account = _new_account(
        policy,
        now,
        user_id,
        monthly_limit,
        reset_anchor,
        time_zone,
        rollover_cap,
        organisation_id,
        window_caps,
    )
    return _write(lambda: operations.open_account(account))


def ensure_account(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    reset_anchor: object,
    time_zone: object = None,
    rollover_cap: object = None,
    organisation_id: object = None,
    window_caps: object = None,
) -> Command[TokenAccount, TokenAccount]:
    account = _new_account(
        policy,
        now,
        user_id,
        monthly_limit,
        reset_anchor,
        time_zone,
        rollover_cap,
        organisation_id,
        window_caps,
    )
    return _write(lambda: operations.ensure_account(account))


def get_account(user_id: object) -> Command[TokenAccount, TokenAccount]:
    checked = _validation.identifier(user_id, "user_id")
    return _read(lambda: reads.account(checked))


def status(
    policy: MonthlyResetPolicy, now: datetime, user_id: object
) -> Command[TokenStatus, TokenStatus]:
    checked = _validation.identifier(user_id, "user_id")
    return _read(lambda: reads.status(policy, now, checked))


# writes


def deduct(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    amount: object,
    *,
    feature: object,
    context: object,
    idempotency_key: object,
    thresholds: Thresholds = (),
) -> Command[Spent, DeductResult]:
    user = _validation.identifier(user_id, "user_id")
    tokens = _validation.positive_int(amount)
    checked_feature = _validation.optional_identifier(feature, "feature")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    checked_context = _validation.json_context(context)
    direct = operations.DirectDeduction(
        user,
        tokens,
        checked_feature,
        checked_context,
        key,
        now,
        policy.period(now).start,
        thresholds,
    )
    return Command(
        lambda: operations.deduct(
            policy,
            now,
            user,
            tokens,
            feature=checked_feature,
            context=checked_context,
            idempotency_key=key,
            thresholds=thresholds,
        ),
        _deducted,
        shortcut=Shortcut.single(operations.Call("deduct_directly", (direct,))),
    )


def set_limit(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    overage_limit: object,
    rollover_cap: object = None,
    thresholds: Thresholds = (),
) -> Command[TokenAccount, TokenAccount]:
    user = _validation.identifier(user_id, "user_id")
    if monthly_limit is None and overage_limit is None and rollover_cap is None:
        raise InvalidAmount("set_limit needs a monthly_limit, an overage_limit or a rollover_cap")
    limit = None if monthly_limit is None else check_monthly_limit(monthly_limit)
    overage = (
        None
        if overage_limit is None
        else _validation.non_negative_int(overage_limit, "overage_limit")
    )
    rollover = (
        None if rollover_cap is None else _validation.non_negative_int(rollover_cap, "rollover_cap")
    )
    return _write(
        lambda: operations.set_limits(policy, now, user, limit, overage, rollover, thresholds)
    )


def set_time_zone(
    policy: MonthlyResetPolicy, now: datetime, user_id: object, time_zone: object
) -> Command[TokenAccount, TokenAccount]:
    user = _validation.identifier(user_id, "user_id")
    zone = _optional_time_zone(time_zone)
    return _write(lambda: operations.set_time_zone(policy, now, user, zone))


def move_to_organisation(
    policy: MonthlyResetPolicy, now: datetime, user_id: object, organisation_id: object
) -> Command[TokenAccount, TokenAccount]:
    user = _validation.identifier(user_id, "user_id")
    organisation = _validation.optional_identifier(organisation_id, "organisation_id")
    return _write(lambda: operations.move_to_organisation(policy, now, user, organisation))


def set_window_caps(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    caps: object,
    thresholds: Thresholds = (),
) -> Command[TokenAccount, TokenAccount]:
    """Caps per window unit; ``None`` or ``{}`` caps no window."""
    user = _validation.identifier(user_id, "user_id")
    checked = check_window_caps(caps)
    return _write(lambda: operations.set_window_caps(policy, now, user, checked, thresholds))


def set_thresholds(
    policy: MonthlyResetPolicy, now: datetime, user_id: object, thresholds: object
) -> Command[TokenAccount, TokenAccount]:
    """The account's own thresholds; ``None`` clears them (the ledger's defaults apply)."""
    user = _validation.identifier(user_id, "user_id")
    own = None if thresholds is None else check_thresholds(thresholds)
    return _write(lambda: operations.set_thresholds(policy, now, user, own))


def grant(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    amount: object,
    *,
    expires_at: object,
    reason: object,
    idempotency_key: object,
    priority: object = 0,
) -> Command[Transaction, Transaction]:
    user = _validation.identifier(user_id, "user_id")
    tokens = _validation.positive_int(amount)
    checked_reason = _validation.optional_text(reason, "reason")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    expiry = _validation.optional_instant(expires_at, "expires_at")
    rank = _validation.priority(priority)
    offered = Grant.offered(operations.new_id(), user, tokens, now, expiry, checked_reason, rank)
    return _write(lambda: operations.grant(policy, now, offered, key))


def void_grant(
    policy: MonthlyResetPolicy,
    now: datetime,
    grant_id: object,
    *,
    reason: object,
    idempotency_key: object,
    thresholds: Thresholds = (),
) -> Command[Transaction, Transaction]:
    checked = _validation.identifier(grant_id, "grant_id")
    checked_reason = _validation.optional_text(reason, "reason")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    return _write(
        lambda: operations.void_grant(
            policy, now, checked, reason=checked_reason, idempotency_key=key, thresholds=thresholds
        )
    )


def reserve(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    amount: object,
    *,
    ttl: object,
    feature: object,
    idempotency_key: object,
    thresholds: Thresholds = (),
) -> Command[Spent, Reservation]:
    user = _validation.identifier(user_id, "user_id")
    tokens = _validation.positive_int(amount)
    checked_feature = _validation.optional_identifier(feature, "feature")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    expiry = _validation.instant_after(now, ttl, "ttl")
    hold = Reservation(operations.new_id(), user, tokens, now, expiry, feature=checked_feature)
    return Command(lambda: operations.reserve(policy, now, hold, key, thresholds), _reserved)


def commit(
    policy: MonthlyResetPolicy,
    now: datetime,
    reservation_id: object,
    actual_amount: object,
    thresholds: Thresholds = (),
) -> Command[Spent, DeductResult]:
    actual = _validation.non_negative_int(actual_amount, "actual_amount")
    return _settle(policy, now, reservation_id, actual, thresholds)


def release(
    policy: MonthlyResetPolicy, now: datetime, reservation_id: object
) -> Command[Spent, DeductResult]:
    return _settle(policy, now, reservation_id, None)


def refund(
    policy: MonthlyResetPolicy,
    now: datetime,
    transaction_id: object,
    amount: object,
    *,
    reason: object,
    idempotency_key: object,
) -> Command[Transaction, Transaction]:
    spent = _validation.positive_int(transaction_id, "transaction_id")
    tokens = _validation.optional_positive_int(amount, "amount")
    checked_reason = _validation.optional_text(reason, "reason")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    return _write(
        lambda: operations.refund(
            policy, now, spent, tokens, reason=checked_reason, idempotency_key=key
        )
    )


def reset_if_needed(
    policy: MonthlyResetPolicy, now: datetime, user_id: object
) -> Command[bool, bool]:
    user = _validation.identifier(user_id, "user_id")
    return _write(lambda: operations.reset(policy, now, user))


@attrs.frozen
class ResetAll:
    """The bulk reset, checked: one unit of work per batch, the next starting after the last."""

    policy: MonthlyResetPolicy
    now: datetime
    batch_size: int
    progress: Callable[[int], object] | None

    def batch(self, after_user_id: str | None) -> Command[Batch, Batch]:
        cutoffs = reads.stale_cutoffs(self.policy, self.now)
        return _write(
            lambda: operations.reset_batch(
                self.policy, self.now, cutoffs, after_user_id, self.batch_size
            )
        )

    def step(
        self, after_user_id: str | None, for_the_domain: int = 0, final: bool = False
    ) -> Command[ResetStep, ResetStep]:
        """The next step after ``after_user_id``: a batch, or the shortcut of a set-based run.

        ``for_the_domain`` (and ``final``) is what the step before left to the domain:
        a batch of that many then, without a shortcut (see :class:`ResetStep`). A
        facade that ignores shortcuts gets the batches of :meth:`batch`.
        """
        cutoffs = reads.stale_cutoffs(self.policy, self.now)
        size = for_the_domain or self.batch_size

        def batch() -> Operation[ResetStep]:
            return operations.reset_step(
                self.policy,
                self.now,
                cutoffs,
                after_user_id,
                size,
                partial=for_the_domain > 0,
                final=final,
            )

        if for_the_domain:
            return _write(batch)
        return Command(
            batch,
            _as_is,
            shortcut=Shortcut(
                _RESET_CALENDAR_RUN,
                lambda: operations.reset_calendar_run(self.now, cutoffs, after_user_id, size),
            ),
        )


_RESET_CALENDAR_RUN = ("reset_calendar_run",)


def reset_all_stale(
    policy: MonthlyResetPolicy, now: datetime, batch_size: object, progress: object
) -> ResetAll:
    size = _validation.positive_int(batch_size, "batch_size")
    if progress is not None and not callable(progress):
        raise InvalidInput(f"progress must be a callable or None, got {progress!r}")
    return ResetAll(policy, now, size, progress)


# operator reads


_COUNTED = ("count_accounts_where",)


def health(policy: MonthlyResetPolicy, now: datetime) -> Command[Health, Health]:
    return Command(
        lambda: reads.health(policy, now),
        _as_is,
        writes=False,
        shortcut=Shortcut(_COUNTED, lambda: reads.health_counted(policy, now)),
    )


def alerts(
    policy: MonthlyResetPolicy, now: datetime, **thresholds: Any
) -> Command[AlertReport, AlertReport]:
    checked = AlertThresholds(**thresholds)
    return Command(
        lambda: reads.alerts(policy, now, checked),
        _as_is,
        writes=False,
        shortcut=Shortcut(_COUNTED, lambda: reads.alerts_counted(policy, now, checked)),
    )


def reconcile(user_id: object) -> Command[list[Discrepancy], list[Discrepancy]]:
    checked = _validation.optional_identifier(user_id, "user_id")
    return Command(
        lambda: reads.reconcile(checked),
        _as_is,
        writes=False,
        shortcut=Shortcut(("find_discrepancies",), lambda: reads.reconcile_counted(checked)),
    )


def history(**filters: Any) -> Command[History, History]:
    """``filters`` are :class:`HistoryQuery`'s, which checks each of them."""
    query = HistoryQuery(**filters)
    return _read(lambda: reads.history(query))


# notifications


def notifications(after: object, limit: object) -> Command[list[Notification], list[Notification]]:
    """Notifications with an id above ``after``, oldest first, at most ``limit``."""
    start = _validation.non_negative_int(after, "after")
    size = _validation.positive_int(limit, "limit")
    if size > MAX_HISTORY_LIMIT:
        raise InvalidInput(f"limit must be at most {MAX_HISTORY_LIMIT}, got {size}")
    return _read(lambda: reads.notifications(start, size))


def notification_cursor(consumer: object) -> Command[int, int]:
    checked = _validation.identifier(consumer, "consumer")
    return _read(lambda: reads.notification_cursor(checked))


def acknowledge_notifications(consumer: object, up_to: object) -> Command[int, int]:
    checked = _validation.identifier(consumer, "consumer")
    position = _validation.non_negative_int(up_to, "up_to")
    return _write(lambda: operations.acknowledge_notifications(checked, position))


def usage(policy: MonthlyResetPolicy, **filters: Any) -> Command[UsageReport, UsageReport]:
    """``filters`` are :class:`UsageQuery`'s, which checks each of them; days and months are
    the policy's unless ``time_zone`` names another zone."""
    if filters.get("time_zone") is None:
        filters["time_zone"] = policy.timezone
    query = UsageQuery(**filters)
    return _read(lambda: reads.usage(query))


# helpers


def _new_account(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    reset_anchor: object,
    time_zone: object,
    rollover_cap: object,
    organisation_id: object,
    window_caps: object,
) -> TokenAccount:
    user = _validation.identifier(user_id, "user_id")
    limit = check_monthly_limit(monthly_limit)
    anchor = _validation.optional_instant(reset_anchor, "reset_anchor")
    zone = _optional_time_zone(time_zone)
    rollover = (
        policy.rollover_cap
        if rollover_cap is None
        else _validation.non_negative_int(rollover_cap, "rollover_cap")
    )
    return TokenAccount.open(
        user,
        limit,
        policy,
        now,
        anchor,
        time_zone=zone,
        rollover_cap=rollover,
        organisation_id=_validation.optional_identifier(organisation_id, "organisation_id"),
        window_caps=check_window_caps(window_caps),
    )


def _optional_time_zone(value: object) -> str | None:
    """An IANA zone name that this machine knows, or ``None`` for the policy's zone."""
    return None if value is None else load_zone(value).key


def _settle(
    policy: MonthlyResetPolicy,
    now: datetime,
    reservation_id: object,
    actual: int | None,
    thresholds: Thresholds = (),
) -> Command[Spent, DeductResult]:
    checked = _validation.identifier(reservation_id, "reservation_id")
    return Command(lambda: operations.settle(policy, now, checked, actual, thresholds), _deducted)


def _deducted(spent: Spent) -> DeductResult:
    """The result of a spending write, or the refusal its failed entry records."""
    entry = spent.entry
    if not entry.success:
        raise _refusal(spent)
    return DeductResult(True, entry.balance_after, entry)


def _reserved(spent: Spent) -> Reservation:
    if not spent.entry.success or spent.reservation is None:
        raise _refusal(spent)
    return spent.reservation


def _refusal(spent: Spent) -> InsufficientTokens:
    entry = spent.entry
    refused_by = entry.operation_context.get("refused_by")
    return InsufficientTokens(
        entry.user_id,
        entry.amount,
        spent.remaining,
        refused_by if isinstance(refused_by, str) else None,
    )
