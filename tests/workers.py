"""Code that runs in worker processes of the concurrency and crash tests.

It lives in its own module so that ``multiprocessing`` can import it in a
freshly spawned interpreter.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from token_ledger import InsufficientTokens, TokenLedger

LedgerOpener = Callable[[], TokenLedger]


def open_sqlite(path: str) -> TokenLedger:
    return TokenLedger.sqlite(path)


def spend_randomly(
    path: str, user_ids: list[str], rounds: int, seed: int
) -> tuple[list[tuple[int, str, int]], list[str]]:
    """Deduct 1-50 tokens ``rounds`` times; return acknowledged deductions and surprises."""
    rng = random.Random(seed)
    acknowledged: list[tuple[int, str, int]] = []
    surprises: list[str] = []
    with open_sqlite(path) as ledger:
        for _ in range(rounds):
            user_id, amount = rng.choice(user_ids), rng.randint(1, 50)
            try:
                result = ledger.deduct(user_id, amount, feature="load")
            except InsufficientTokens:
                continue
            except Exception as error:
                surprises.append(repr(error))
                continue
            assert result.transaction.id is not None
            acknowledged.append((result.transaction.id, user_id, amount))
    return acknowledged, surprises


def retry_keys(path: str, user_id: str, keys: list[str]) -> list[tuple[str, int]]:
    """Deduct once per key, as every retrying client would; return the entry id per key."""
    with open_sqlite(path) as ledger:
        ids = []
        for key in keys:
            entry = ledger.deduct(user_id, 1, feature="retry", idempotency_key=key).transaction
            assert entry.id is not None
            ids.append((key, entry.id))
        return ids


def spend_until_killed(path: str, user_id: str, acknowledgements: str) -> None:
    """Deduct for ever, writing each acknowledged entry id to a file before the next one."""
    descriptor = os.open(acknowledgements, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with open_sqlite(path) as ledger:
        number = 0
        while True:
            number += 1
            result = ledger.deduct(
                user_id, 1 + number % 7, idempotency_key=f"{os.getpid()}-{number}"
            )
            os.write(descriptor, f"{result.transaction.id}\n".encode())


def open_fresh(path: str) -> int:
    """Open (and so migrate) a database that other processes are opening too."""
    with open_sqlite(path) as ledger:
        ledger.ensure_account("first-user", monthly_limit=10)
        return ledger.status("first-user").monthly_limit


def spend_with_thresholds(
    path: str, thresholds: str, plan: list[tuple[str, int]], start: float
) -> list[str]:
    """Deduct each planned amount from a ledger with these default thresholds, starting at
    the same moment as the other workers; return the surprises."""
    import time

    from token_ledger import Threshold

    defaults = [Threshold.parse(key) for key in thresholds.split(",")]
    surprises: list[str] = []
    with TokenLedger.sqlite(path, thresholds=defaults) as ledger:
        time.sleep(max(0.0, start - time.time()))
        for user_id, amount in plan:
            try:
                ledger.deduct(user_id, amount, feature="load")
            except InsufficientTokens:
                continue
            except Exception as error:
                surprises.append(repr(error))
    return surprises
