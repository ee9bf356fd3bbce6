"""SQLite scenarios: deductions in one thread and in four processes, status reads, bulk reset."""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from baselines import FEATURE, LIMIT, previous_period
from harness import Context, Outcome, Scenarios, Target, alternate, bulk_reset
from jobs import at_once, one_at_a_time
from token_ledger import MonthlyResetPolicy, TokenLedger

scenarios = Scenarios()

PROCESSES = 4
#: Accounts the single-thread scenario spreads its deductions over.
ACCOUNTS = 10
READER = "reader"
MAX_HISTORY_SLOWDOWN = 1.2


def stored(instant: datetime) -> str:
    """An instant as the SQLite adapter stores it: fixed-width UTC text."""
    return instant.isoformat(sep=" ", timespec="microseconds")


def open_accounts(path: Path, user_ids: Sequence[str]) -> None:
    with TokenLedger.sqlite(path) as ledger:
        for user_id in user_ids:
            ledger.open_account(user_id, monthly_limit=LIMIT)


@scenarios("sqlite_1_thread", "SQLite file, WAL, 1 thread: deductions")
def sqlite_one_thread(context: Context) -> Outcome:
    path = context.directory("sqlite-1-thread") / "ledger.db"
    user_ids = [f"user-{number}" for number in range(ACCOUNTS)]
    open_accounts(path, user_ids)
    return one_at_a_time(context, "sqlite", str(path), "", user_ids)


@scenarios("sqlite_4_processes_distinct", "SQLite file, 4 processes, distinct accounts")
def sqlite_processes_distinct(context: Context) -> Outcome:
    path = context.directory("sqlite-4-distinct") / "ledger.db"
    user_ids = [f"user-{number}" for number in range(PROCESSES)]
    open_accounts(path, user_ids)
    return at_once(context, "sqlite", str(path), "", user_ids, PROCESSES)


@scenarios("sqlite_4_processes_hot", "SQLite file, 4 processes, one hot account")
def sqlite_processes_hot(context: Context) -> Outcome:
    path = context.directory("sqlite-4-hot") / "ledger.db"
    open_accounts(path, ["hot"])
    return at_once(context, "sqlite", str(path), "", ["hot"], PROCESSES)


def add_history(path: Path, user_id: str, rows: int, at: datetime) -> None:
    """``rows`` log entries for ``user_id``, written in one statement to keep the setup short."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
            " balance_after, success, feature, operation_context)"
            " SELECT ?, 'deduct', 1, ?, 1000, 1, ?, '{}' FROM n",
            (rows, user_id, stored(at), FEATURE),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def status_reads(ledger: TokenLedger, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        ledger.status(READER)
    return count / (time.perf_counter() - start)


@scenarios(
    "sqlite_status_history", "SQLite status, reset pending: empty log vs {history_rows:,} log rows"
)
def sqlite_status(context: Context) -> Outcome:
    """Status must not grow with history: the same read with an empty log and a long one.

    The account was used last month, so each read also computes the pending reset.
    """
    directory = context.directory("sqlite-status")
    last_month = previous_period()
    rows = context.size.history_rows
    ledgers = []
    for name in ("empty", "history"):
        path = directory / f"{name}.db"
        with TokenLedger.sqlite(path, clock=lambda: last_month) as ledger:
            ledger.open_account(READER, monthly_limit=1000)
            ledger.deduct(READER, 10, feature=FEATURE)
        if name == "history":
            add_history(path, READER, rows, last_month)
        ledgers.append(TokenLedger.sqlite(path))
    empty, history = ledgers
    try:
        for ledger in ledgers:
            if ledger.status(READER).monthly_used != 0:
                raise RuntimeError("the benchmark account has no reset pending")
        reads = context.size.status_reads
        rounds = alternate(
            context.size.rounds,
            lambda _tag: status_reads(empty, reads),
            lambda _tag: status_reads(history, reads),
        )
    finally:
        empty.close()
        history.close()
    slowdown = rounds.ratio
    empty_rate = statistics.median(rounds.first)
    history_rate = statistics.median(rounds.second)
    return Outcome(
        metrics={
            "empty_log_reads_per_second": empty_rate,
            "history_reads_per_second": history_rate,
            "history_rows": rows,
            "history_slowdown": slowdown,
        },
        library=f"{empty_rate:,.0f} reads/s; {history_rate:,.0f} with {rows:,} rows",
        comparison=f"{slowdown:.2f}x the time",
        targets=(Target(f"<= {MAX_HISTORY_SLOWDOWN}x the time", slowdown <= MAX_HISTORY_SLOWDOWN),),
    )


def add_stale_accounts(path: Path, accounts: int, reset_at: datetime) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO user_tokens (user_id, monthly_limit, monthly_tokens_used,"
            " last_monthly_reset, created_at, updated_at)"
            " SELECT printf('user-%06d', i), 100, 5, ?, ?, ? FROM n",
            (accounts, stored(reset_at), stored(reset_at), stored(reset_at)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


@scenarios("sqlite_reset_all_stale", "SQLite reset_all_stale, {stale_accounts:,} stale accounts")
def sqlite_reset_all_stale(context: Context) -> Outcome:
    accounts = context.size.stale_accounts
    last_reset = MonthlyResetPolicy().period(previous_period()).start
    seconds = []
    for _ in range(context.size.reset_rounds):
        path = context.directory("sqlite-reset") / "ledger.db"
        TokenLedger.sqlite(path).close()
        add_stale_accounts(path, accounts, last_reset)
        with TokenLedger.sqlite(path) as ledger:
            start = time.perf_counter()
            reset = ledger.reset_all_stale()
            seconds.append(time.perf_counter() - start)
        if reset != accounts:
            raise RuntimeError(f"{accounts} stale accounts, but {reset} were reset")
    return bulk_reset(accounts, seconds)
