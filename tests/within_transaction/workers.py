"""An application process of the multi-process tests: orders, each paid for in its transaction.

Each round inserts an order row and deducts its tokens in one application
transaction, which then commits, rolls back, or raises; transient failures are
run again from the start with ``retrying``, refusals drop the order. What
committed is reported back, for the test to compare with the database.
It lives in a module of its own so that a fresh interpreter can import it.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from threading import Barrier

import attrs
import psycopg
from psycopg import sql

from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.within import is_transient, retrying, within

START = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
START_TIMEOUT = 120.0
# A hot account makes REPEATABLE READ and SERIALIZABLE transactions, and SQLite transactions
# that read before they write, conflict often; more attempts than retrying's default of 10.
ATTEMPTS = 30
SQLITE_MODES = ("begin-immediate", "deferred-insert-first", "legacy-within-first", "read-first")
POSTGRES_LEVELS = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")

_start_line: Barrier | None = None


def join_start_line(start_line: Barrier) -> None:
    global _start_line
    _start_line = start_line


def wait_at_start_line() -> None:
    assert _start_line is not None, "the pool was made without join_start_line"
    _start_line.wait(START_TIMEOUT)


def fixed_clock() -> datetime:
    """One instant for every process: no month end can fall inside the test."""
    return START


class Abandoned(Exception):
    """The application changed its mind: its transaction rolls back."""


@attrs.define
class Outcome:
    committed: list[tuple[str, int, int]] = attrs.Factory(list)  # order, amount, entry id
    refused: int = 0
    rolled_back: int = 0
    raised: int = 0
    attempts: int = 0
    gave_up: list[str] = attrs.Factory(list)  # "mode: error type", transient every time
    surprises: list[str] = attrs.Factory(list)


Attempt = Callable[[str, int, str, str], "int | None"]
"""One attempt at an order: (order id, amount, fate, mode) -> the entry id, None if rolled back."""


def shop(attempt: Attempt, rounds: int, seed: int, modes: tuple[str, ...]) -> Outcome:
    """``rounds`` orders of 1 to 5 tokens; each commits (60%), rolls back or raises."""
    rng = random.Random(seed)
    outcome = Outcome()
    wait_at_start_line()
    for number in range(rounds):
        order = (f"w{seed}-{number}", rng.randint(1, 5))
        fate = rng.choice(("commit", "commit", "commit", "roll back", "raise"))
        mode = rng.choice(modes)

        def once(order: tuple[str, int] = order, fate: str = fate, mode: str = mode) -> int | None:
            outcome.attempts += 1
            return attempt(*order, fate, mode)

        try:
            entry_id = retrying(once, attempts=ATTEMPTS)
        except InsufficientTokens:
            outcome.refused += 1
        except Abandoned:
            outcome.raised += 1
        except Exception as error:
            if is_transient(error):
                outcome.gave_up.append(f"{mode}: {type(error).__name__}")
            else:
                outcome.surprises.append(f"{mode}, {fate}: {error!r}")
        else:
            if entry_id is None:
                outcome.rolled_back += 1
            else:
                outcome.committed.append((*order, entry_id))
    return outcome


def sqlite_shop(path: str, user_id: str, rounds: int, seed: int) -> Outcome:
    """Transactions begun every way an application may begin them on SQLite."""
    ledger = TokenLedger.sqlite(path, clock=fixed_clock)  # opened once: the tables exist
    legacy = sqlite3.connect(path, timeout=30.0)  # isolation_level="": sqlite3's default
    manual = sqlite3.connect(path, timeout=30.0, isolation_level=None)

    @contextmanager
    def transaction(mode: str) -> Iterator[sqlite3.Connection]:
        conn = legacy if mode == "legacy-within-first" else manual
        if mode == "begin-immediate":
            conn.execute("BEGIN IMMEDIATE")
        elif mode in ("deferred-insert-first", "read-first"):
            conn.execute("BEGIN")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        if conn.in_transaction:
            conn.commit()

    def attempt(order_id: str, amount: int, fate: str, mode: str) -> int | None:
        with transaction(mode) as conn:
            insert_first = mode in ("begin-immediate", "deferred-insert-first")
            if mode == "read-first":  # then within() takes the write lock, or refuses at once
                conn.execute("SELECT count(*) FROM orders").fetchone()
            if insert_first:
                conn.execute("INSERT INTO orders (id, user_id) VALUES (?, ?)", (order_id, user_id))
            with within(ledger, conn) as tokens:
                result = tokens.deduct(user_id, amount, feature="order", idempotency_key=order_id)
            if not insert_first:
                conn.execute("INSERT INTO orders (id, user_id) VALUES (?, ?)", (order_id, user_id))
            if fate == "raise":
                raise Abandoned(fate)
            if fate == "roll back":
                conn.rollback()
                return None
        return result.transaction.id

    try:
        return shop(attempt, rounds, seed, SQLITE_MODES)
    finally:
        legacy.close()
        manual.close()
        ledger.close()


def postgres_shop(url: str, schema: str, user_id: str, rounds: int, seed: int) -> Outcome:
    """Transactions at every isolation level, some reading before they spend."""
    conn = psycopg.connect(url)
    ledger = TokenLedger.postgres(conn, schema=schema, clock=fixed_clock)  # the same connection
    orders = sql.Identifier(schema, "orders")

    def attempt(order_id: str, amount: int, fate: str, level: str) -> int | None:
        read_first = random.random() < 0.5
        with conn.transaction():
            conn.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL " + level))
            if read_first:
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(orders)).fetchone()
            conn.execute(
                sql.SQL("INSERT INTO {} (id, user_id) VALUES (%s, %s)").format(orders),
                (order_id, user_id),
            )
            with within(ledger, conn) as tokens:
                result = tokens.deduct(user_id, amount, feature="order", idempotency_key=order_id)
            if fate == "raise":
                raise Abandoned(fate)
            if fate == "roll back":
                raise psycopg.Rollback  # psycopg's way out of a block: rolled back, not raised
        return None if fate == "roll back" else result.transaction.id

    try:
        return shop(attempt, rounds, seed, POSTGRES_LEVELS)
    finally:
        conn.close()
