"""The operations are written once: runners other than the facade's run them unchanged.

Two minimal runners stand in for what an asyncio facade and a caller-owned
transaction need: one logs every call an operation makes of the unit of
work, one awaits each call in an event loop. Both drive the very generators
``TokenLedger`` drives, against a real engine's unit of work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest

from token_ledger import (
    InsufficientTokens,
    MonthlyResetPolicy,
    ReservationClosed,
    TokenAccount,
    TokenLedger,
)
from token_ledger import operations as ops
from token_ledger.grants import Grant, Reservation
from token_ledger.operations import Call, Operation
from token_ledger.repository import TokenRepository, UnitOfWork

T = TypeVar("T")
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
POLICY = MonthlyResetPolicy()


class LoggedWork:
    """A unit of work that records the name of every call before passing it on."""

    def __init__(self, work: UnitOfWork, log: list[str]) -> None:
        self._work = work
        self._log = log

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._work, name)

        def logged(*arguments: Any) -> Any:
            self._log.append(name)
            return method(*arguments)

        return logged


def run_logged(repository: TokenRepository, operation: Operation[T]) -> tuple[T, list[str]]:
    log: list[str] = []
    with repository.unit_of_work() as work:
        return ops.run(operation, LoggedWork(work, log)), log  # type: ignore[arg-type]


class AwaitableWork:
    """An asyncio-shaped unit of work: every call is a coroutine that yields to the loop."""

    def __init__(self, work: UnitOfWork) -> None:
        self._work = work

    async def call(self, call: Call) -> Any:
        await asyncio.sleep(0)
        return getattr(self._work, call.method)(*call.arguments)


async def run_awaiting(operation: Operation[T], work: AwaitableWork) -> T:
    """The whole of an asyncio runner: send each awaited answer back in."""
    answer: Any = None
    while True:
        try:
            call = operation.send(answer)
        except StopIteration as finished:
            result: T = finished.value
            return result
        answer = await work.call(call)


def run_async(repository: TokenRepository, operation: Operation[T]) -> T:
    async def main() -> T:
        with repository.unit_of_work() as work:
            return await run_awaiting(operation, AwaitableWork(work))

    return asyncio.run(main())


def opened(repository: TokenRepository) -> TokenAccount:
    account = TokenAccount.open("u1", 50, POLICY, NOW)
    run_logged(repository, ops.open_account(account))
    return account


def test_a_deduction_states_each_call_it_makes(repository: TokenRepository) -> None:
    opened(repository)

    spent, log = run_logged(
        repository,
        ops.deduct(POLICY, NOW, "u1", 5, feature="chat", context={}, idempotency_key="k"),
    )

    assert log == [
        "load_path",
        "find_by_idempotency_key",
        "save_accounts",
        "append_transactions",
    ]
    assert (spent.entry.amount, spent.remaining) == (5, 45)
    replayed, log = run_logged(
        repository,
        ops.deduct(POLICY, NOW, "u1", 5, feature="chat", context={}, idempotency_key="k"),
    )
    assert log == ["load_path", "find_by_idempotency_key"]
    assert replayed.entry == spent.entry


def test_the_facade_and_both_runners_store_the_same(
    repository_factory: Callable[[], TokenRepository],
) -> None:
    """The same sequence through ``TokenLedger``, the logging runner and the awaiting one."""
    by_facade, by_log, by_loop = (repository_factory() for _ in range(3))
    ledger = TokenLedger(by_facade, clock=lambda: NOW)
    ledger.open_account("u1", 50)
    spent = ledger.deduct("u1", 20, feature="chat").transaction.id
    ledger.grant("u1", 10, reason="promo")
    hold = ledger.reserve("u1", 5, ttl=timedelta(minutes=1))
    ledger.commit(hold.id, 3)
    assert spent is not None
    ledger.refund(spent, 4, reason="bad answer")

    for repository, runner in ((by_log, run_logged), (by_loop, run_async)):

        def step(operation: Operation[T], runner: Any = runner, repository: Any = repository) -> T:
            result = runner(repository, operation)
            return result[0] if runner is run_logged else result  # type: ignore[no-any-return]

        step(ops.open_account(TokenAccount.open("u1", 50, POLICY, NOW)))
        step(ops.deduct(POLICY, NOW, "u1", 20, feature="chat", context={}, idempotency_key=None))
        offered = Grant.offered("g", "u1", 10, NOW, reason="promo")
        step(ops.grant(POLICY, NOW, offered, None))
        held = step(
            ops.reserve(
                POLICY, NOW, Reservation("r", "u1", 5, NOW, NOW + timedelta(minutes=1)), None
            )
        )
        assert held.reservation is not None
        step(ops.settle(POLICY, NOW, "r", 3))
        step(ops.refund(POLICY, NOW, spent, 4, reason="bad answer", idempotency_key=None))

    def stored(repository: TokenRepository) -> list[tuple[Any, ...]]:
        account = repository.get_account("u1")
        assert account is not None
        entries = TokenLedger(repository, clock=lambda: NOW).history("u1")
        return [
            (account.monthly_tokens_used, account.grant_balance, account.reserved_tokens),
            *((e.operation_type, e.amount, e.balance_after, e.effects.usage) for e in entries),
        ]

    assert stored(by_facade) == stored(by_log) == stored(by_loop)
    for repository in (by_facade, by_log, by_loop):
        assert TokenLedger(repository, clock=lambda: NOW).reconcile() == []


def test_refusals_come_from_the_domain_whatever_runs_the_operation(
    repository: TokenRepository,
) -> None:
    opened(repository)
    spent, _ = run_logged(
        repository,
        ops.deduct(POLICY, NOW, "u1", 60, feature=None, context={}, idempotency_key=None),
    )
    assert not spent.entry.success
    hold = Reservation("r", "u1", 5, NOW, NOW + timedelta(seconds=1))
    run_logged(repository, ops.reserve(POLICY, NOW, hold, None))
    late = ops.settle(POLICY, NOW + timedelta(seconds=2), "r", 1)
    with pytest.raises(ReservationClosed):
        run_async(repository, late)
    with pytest.raises(InsufficientTokens):
        TokenLedger(repository, clock=lambda: NOW).deduct("u1", 60)
