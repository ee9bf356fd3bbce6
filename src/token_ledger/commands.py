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

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import attrs

from token_ledger import _validation, operations, reads
from token_ledger.account import TokenAccount, check_monthly_limit
from token_ledger.errors import InsufficientTokens, InvalidAmount, InvalidInput
from token_ledger.grants import Grant, Reservation
from token_ledger.monitoring import AlertReport, AlertThresholds, Health
from token_ledger.operations import Operation, Spent
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.reconciliation import Discrepancy
from token_ledger.repository import HistoryQuery
from token_ledger.results import DeductResult, History, TokenStatus
from token_ledger.transactions import Transaction

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
DEFAULT_RESET_BATCH_SIZE = 1000

Batch = tuple[Sequence[TokenAccount], int]
"""The accounts a batch of the bulk reset looked at, and how many of them it reset."""


def _as_is(value: T) -> T:
    return value


@attrs.frozen
class Command(Generic[T, R]):
    """A checked call: the operation to run (made afresh for each attempt) and its answer.

    ``writes`` says where the operation runs: in a unit of work, which a facade
    may run again from the start after a transient failure, or against the
    repository, as a read.
    """

    operation: Callable[[], Operation[T]]
    answer: Callable[[T], R]
    writes: bool = True


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
) -> Command[TokenAccount, TokenAccount]:
    account = _new_account(policy, now, user_id, monthly_limit, reset_anchor)
    return _write(lambda: operations.open_account(account))


def ensure_account(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    reset_anchor: object,
) -> Command[TokenAccount, TokenAccount]:
    account = _new_account(policy, now, user_id, monthly_limit, reset_anchor)
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
) -> Command[Spent, DeductResult]:
    user = _validation.identifier(user_id, "user_id")
    tokens = _validation.positive_int(amount)
    checked_feature = _validation.optional_identifier(feature, "feature")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    checked_context: Mapping[str, Any] = _validation.json_context(context)
    return Command(
        lambda: operations.deduct(
            policy,
            now,
            user,
            tokens,
            feature=checked_feature,
            context=checked_context,
            idempotency_key=key,
        ),
        _deducted,
    )


def set_limit(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    overage_limit: object,
) -> Command[TokenAccount, TokenAccount]:
    user = _validation.identifier(user_id, "user_id")
    if monthly_limit is None and overage_limit is None:
        raise InvalidAmount("set_limit needs a monthly_limit, an overage_limit, or both")
    limit = None if monthly_limit is None else check_monthly_limit(monthly_limit)
    overage = (
        None
        if overage_limit is None
        else _validation.non_negative_int(overage_limit, "overage_limit")
    )
    return _write(lambda: operations.set_limits(policy, now, user, limit, overage))


def grant(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    amount: object,
    *,
    expires_at: object,
    reason: object,
    idempotency_key: object,
) -> Command[Transaction, Transaction]:
    user = _validation.identifier(user_id, "user_id")
    tokens = _validation.positive_int(amount)
    checked_reason = _validation.optional_text(reason, "reason")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    expiry = _validation.optional_instant(expires_at, "expires_at")
    offered = Grant.offered(operations.new_id(), user, tokens, now, expiry, checked_reason)
    return _write(lambda: operations.grant(policy, now, offered, key))


def reserve(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    amount: object,
    *,
    ttl: object,
    feature: object,
    idempotency_key: object,
) -> Command[Spent, Reservation]:
    user = _validation.identifier(user_id, "user_id")
    tokens = _validation.positive_int(amount)
    checked_feature = _validation.optional_identifier(feature, "feature")
    key = _validation.optional_identifier(idempotency_key, "idempotency_key")
    expiry = _validation.instant_after(now, ttl, "ttl")
    hold = Reservation(operations.new_id(), user, tokens, now, expiry, feature=checked_feature)
    return Command(lambda: operations.reserve(policy, now, hold, key), _reserved)


def commit(
    policy: MonthlyResetPolicy, now: datetime, reservation_id: object, actual_amount: object
) -> Command[Spent, DeductResult]:
    actual = _validation.non_negative_int(actual_amount, "actual_amount")
    return _settle(policy, now, reservation_id, actual)


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


def reset_all_stale(
    policy: MonthlyResetPolicy, now: datetime, batch_size: object, progress: object
) -> ResetAll:
    size = _validation.positive_int(batch_size, "batch_size")
    if progress is not None and not callable(progress):
        raise InvalidInput(f"progress must be a callable or None, got {progress!r}")
    return ResetAll(policy, now, size, progress)


# operator reads


def health(policy: MonthlyResetPolicy, now: datetime) -> Command[Health, Health]:
    return _read(lambda: reads.health(policy, now))


def alerts(
    policy: MonthlyResetPolicy, now: datetime, **thresholds: Any
) -> Command[AlertReport, AlertReport]:
    checked = AlertThresholds(**thresholds)
    return _read(lambda: reads.alerts(policy, now, checked))


def reconcile(user_id: object) -> Command[list[Discrepancy], list[Discrepancy]]:
    checked = _validation.optional_identifier(user_id, "user_id")
    return _read(lambda: reads.reconcile(checked))


def history(**filters: Any) -> Command[History, History]:
    """``filters`` are :class:`HistoryQuery`'s, which checks each of them."""
    query = HistoryQuery(**filters)
    return _read(lambda: reads.history(query))


# helpers


def _new_account(
    policy: MonthlyResetPolicy,
    now: datetime,
    user_id: object,
    monthly_limit: object,
    reset_anchor: object,
) -> TokenAccount:
    user = _validation.identifier(user_id, "user_id")
    limit = check_monthly_limit(monthly_limit)
    anchor = _validation.optional_instant(reset_anchor, "reset_anchor")
    return TokenAccount.open(user, limit, policy, now, anchor)


def _settle(
    policy: MonthlyResetPolicy, now: datetime, reservation_id: object, actual: int | None
) -> Command[Spent, DeductResult]:
    checked = _validation.identifier(reservation_id, "reservation_id")
    return Command(lambda: operations.settle(policy, now, checked, actual), _deducted)


def _deducted(spent: Spent) -> DeductResult:
    """The result of a spending write, or the refusal its failed entry records."""
    entry = spent.entry
    if not entry.success:
        raise InsufficientTokens(entry.user_id, entry.amount, spent.remaining)
    return DeductResult(True, entry.balance_after, entry)


def _reserved(spent: Spent) -> Reservation:
    if not spent.entry.success or spent.reservation is None:
        raise InsufficientTokens(spent.entry.user_id, spent.entry.amount, spent.remaining)
    return spent.reservation
