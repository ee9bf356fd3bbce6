"""Code that runs in the worker processes of the PostgreSQL tests.

It lives in a module of its own so that a freshly spawned interpreter can
import it. Workers wait at a start line, so that all sixteen really do run at
once rather than one after another as they finish starting up.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from threading import Barrier
from typing import Any, TypeVar

from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.postgres import PostgresRepository

START_TIMEOUT = 120.0
T = TypeVar("T")

# One planned deduction: (user_id, amount, idempotency_key).
Plan = list[tuple[str, int, str | None]]
# What a worker saw: (user_id, amount, key, entry id or None if refused), and any surprises.
Outcome = tuple[list[tuple[str, int, str | None, int | None]], list[str]]

_start_line: Barrier | None = None


def join_start_line(start_line: Barrier) -> None:
    """Initialise a pool worker with the start line it shares with the others."""
    global _start_line
    _start_line = start_line


def wait_at_start_line() -> None:
    assert _start_line is not None, "the pool was made without join_start_line"
    _start_line.wait(START_TIMEOUT)


def spend(ledger: TokenLedger, plan: Plan) -> Outcome:
    """Try every planned deduction; refusals are expected, any other error is a surprise."""
    seen: list[tuple[str, int, str | None, int | None]] = []
    surprises: list[str] = []
    for user_id, amount, key in plan:
        try:
            result = ledger.deduct(user_id, amount, feature="load", idempotency_key=key)
        except InsufficientTokens:
            seen.append((user_id, amount, key, None))
        except Exception as error:
            surprises.append(repr(error))
        else:
            seen.append((user_id, amount, key, result.transaction.id))
    return seen, surprises


def spend_hold_and_refund(ledger: TokenLedger, user_id: str, rounds: int, seed: int) -> Outcome:
    """Deductions, holds committed in part, and refunds of this worker's own deductions.

    What was spent is seen with its amount, what was refunded with minus its
    amount; refusals are expected, any other error is a surprise.
    """
    rng = random.Random(seed)
    seen: list[tuple[str, int, str | None, int | None]] = []
    surprises: list[str] = []
    refundable: list[int] = []
    for _ in range(rounds):
        try:
            choice = rng.random()
            if choice < 0.2 and refundable:
                refunded = ledger.refund(refundable.pop(), 1)
                seen.append((user_id, -1, None, refunded.id))
                continue
            if choice < 0.6:
                spent = ledger.deduct(user_id, rng.randint(1, 5), feature="load").transaction
                if spent.id is not None:
                    refundable.append(spent.id)
            else:
                hold = ledger.reserve(user_id, rng.randint(2, 6), feature="load")
                spent = ledger.commit(hold.id, rng.randint(0, hold.amount)).transaction
            seen.append((user_id, spent.amount, None, spent.id))
        except InsufficientTokens:
            continue
        except Exception as error:
            surprises.append(repr(error))
    return seen, surprises


def open_account_and_spend(ledger: TokenLedger, user_id: str, limit: int) -> Outcome:
    """The first use of an account, as every worker makes it: create it if missing, spend."""
    ledger.ensure_account(user_id, monthly_limit=limit)
    return spend(ledger, [(user_id, 1, None)])


def in_process(url: str, schema: str, work: Callable[..., T], *arguments: Any) -> T:
    """Run ``work(ledger, *arguments)`` in this worker process, once all are ready."""
    with TokenLedger.postgres(url, schema=schema) as ledger:
        wait_at_start_line()
        return work(ledger, *arguments)


def open_repository(url: str, schema: str) -> None:
    """Start like an application process does: migrate the schema if nobody has yet."""
    wait_at_start_line()
    PostgresRepository(url, schema=schema).close()


def deduct_once(url: str, schema: str, user_id: str, amount: int, key: str) -> None:
    with TokenLedger.postgres(url, schema=schema) as ledger:
        ledger.deduct(user_id, amount, idempotency_key=key)


def in_noting_process(
    url: str, schema: str, thresholds: str, work: Callable[..., T], *arguments: Any
) -> T:
    """:func:`in_process` for a ledger whose default thresholds are ``thresholds``
    (``"80%,100%,nothing_left"``)."""
    from token_ledger import Threshold

    defaults = [Threshold.parse(key) for key in thresholds.split(",")]
    with TokenLedger.postgres(url, schema=schema, thresholds=defaults) as ledger:
        wait_at_start_line()
        return work(ledger, *arguments)
