"""SQLite scenarios: deductions in one thread and in four processes (of their own accounts,
of one hot account, of members of one organisation), status reads, operator queries and
the bulk reset.

The operator queries are measured against the seed guide's queries written in SQLite's
dialect (the guide's are PostgreSQL's), on the same tables, and the bulk reset against
the same resets written as one set-based ``INSERT ... SELECT`` and one ``UPDATE``.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from baselines import FEATURE, LIMIT, previous_period
from harness import (
    Context,
    Outcome,
    Scenarios,
    Target,
    alternate,
    reset_against_statement,
    seconds_of,
    timed_against,
)
from jobs import at_once, one_at_a_time
from token_ledger import MonthlyResetPolicy, TokenLedger, system_clock

scenarios = Scenarios()

PROCESSES = 4
#: Accounts the single-thread scenario spreads its deductions over.
ACCOUNTS = 10
READER = "reader"
ORGANISATION = "org"
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


def open_organisation(path: Path, members: Sequence[str]) -> None:
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account(ORGANISATION, monthly_limit=LIMIT)
        for member in members:
            ledger.open_account(member, monthly_limit=LIMIT, organisation_id=ORGANISATION)


@scenarios(
    "sqlite_4_processes_organisation", "SQLite file, 4 processes, members of one organisation"
)
def sqlite_processes_organisation(context: Context) -> Outcome:
    """Each process deducts for a member of its own, all spending from one organisation's
    budget too; the yardstick writes both rows and both entries by hand (``raw_member``)."""
    path = context.directory("sqlite-4-organisation") / "ledger.db"
    members = [f"member-{number}" for number in range(PROCESSES)]
    open_organisation(path, members)
    return at_once(context, "sqlite", str(path), "", members, PROCESSES, raw="raw_member")


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
            " SELECT printf('user-%07d', i), 100, 5, ?, ?, ? FROM n",
            (accounts, stored(reset_at), stored(reset_at), stored(reset_at)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


# The bulk reset by hand, set-based: every stale account's reset entry (what the library
# writes: the same context, effects and balance) and its new row, in one transaction.
SET_BASED_RESET = (
    "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
    " balance_after, success, operation_context, effects)"
    " SELECT user_id, 'reset', monthly_tokens_used, :now, monthly_limit, 1,"
    " json_object('previous_used', monthly_tokens_used, 'previous_period_start',"
    " substr(last_monthly_reset, 1, 10) || 'T' || substr(last_monthly_reset, 12),"
    " 'period_start', :start_text), CASE WHEN monthly_tokens_used = 0 THEN '{}'"
    " ELSE json_object('usage', -monthly_tokens_used) END"
    " FROM user_tokens WHERE reset_anchor IS NULL AND last_monthly_reset < :start"
    " ORDER BY user_id",
    "UPDATE user_tokens SET monthly_tokens_used = 0, last_monthly_reset = :start,"
    " updated_at = :now WHERE reset_anchor IS NULL AND last_monthly_reset < :start",
)


def library_reset(path: Path) -> float:
    with TokenLedger.sqlite(path) as ledger:
        start = time.perf_counter()
        ledger.reset_all_stale()
        return time.perf_counter() - start


def statement_reset(path: Path) -> float:
    now = system_clock()
    start = MonthlyResetPolicy().period(now).start
    parameters = {
        "now": stored(now),
        "start": stored(start),
        "start_text": start.isoformat(timespec="microseconds"),
    }
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for statement in SET_BASED_RESET:
            conn.execute(statement, parameters)
        conn.execute("COMMIT")
        return time.perf_counter() - began
    finally:
        conn.close()


def one_reset(context: Context, reset: Callable[[Path], float]) -> float:
    accounts = context.size.operator_accounts
    last_reset = MonthlyResetPolicy().period(previous_period()).start
    path = context.directory("sqlite-reset") / "ledger.db"
    TokenLedger.sqlite(path).close()
    add_stale_accounts(path, accounts, last_reset)
    seconds = reset(path)
    with sqlite3.connect(path) as conn:
        left = conn.execute(
            "SELECT count(*) FROM user_tokens WHERE last_monthly_reset <= ?", (stored(last_reset),)
        ).fetchone()[0]
    conn.close()
    if left:
        raise RuntimeError(f"{left} of {accounts} stale accounts were not reset")
    return seconds


@scenarios(
    "sqlite_reset_all_stale",
    "SQLite reset_all_stale, {operator_accounts:,} stale accounts, against one set-based reset",
)
def sqlite_reset_all_stale(context: Context) -> Outcome:
    pairs = [
        (one_reset(context, library_reset), one_reset(context, statement_reset))
        for _ in range(context.size.reset_rounds)
    ]
    return reset_against_statement(context.size.operator_accounts, pairs)


# The seed guide's operator queries (tests/seed_guide.py) in SQLite's dialect: the same
# counts, with the instants the guide's CURRENT_DATE and NOW() stand for as parameters.
SEED_HEALTH = (
    "SELECT COUNT(*) AS total_users,"
    " COUNT(*) FILTER (WHERE last_monthly_reset >= :month) AS current,"
    " COUNT(*) FILTER (WHERE last_monthly_reset < :month) AS stale FROM user_tokens"
)
SEED_ALERTS = (
    "SELECT COUNT(*) FROM user_tokens WHERE last_monthly_reset < :day_before_month",
    "SELECT COUNT(*) FROM token_transactions WHERE success = 0 AND created_at >= :hour_ago",
    "SELECT COUNT(*) FROM user_tokens"
    " WHERE CAST(monthly_tokens_used AS REAL) / monthly_limit > 0.9",
)
GROUPED_RECONCILE = (
    "SELECT t.user_id, t.monthly_tokens_used, coalesce(s.used, 0) FROM user_tokens AS t"
    " LEFT JOIN (SELECT user_id, sum(json_extract(effects, '$.usage')) AS used"
    " FROM token_transactions WHERE success = 1 GROUP BY user_id) AS s"
    " ON s.user_id = t.user_id WHERE t.monthly_tokens_used <> coalesce(s.used, 0)"
)


def seed_parameters() -> dict[str, str]:
    now = system_clock()
    month = MonthlyResetPolicy().period(now).start
    return {
        "month": stored(month),
        "day_before_month": stored(month - timedelta(days=1)),
        "hour_ago": stored(now - timedelta(hours=1)),
    }


def operator_file(context: Context) -> Path:
    """A ledger of ``operator_accounts`` accounts, as ``postgres_scenarios.operator_tables``."""
    path = context.directory("sqlite-operator") / "ledger.db"
    TokenLedger.sqlite(path).close()
    last_month = previous_period()
    last_reset = MonthlyResetPolicy().period(last_month).start
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO user_tokens (user_id, monthly_limit, monthly_tokens_used,"
            " last_monthly_reset, created_at, updated_at)"
            " SELECT printf('user-%07d', i), 100, CASE WHEN i % 10 = 0 THEN 95 ELSE 3 END,"
            " ?, ?, ? FROM n",
            (context.size.operator_accounts, stored(last_reset), *[stored(last_month)] * 2),
        )
        conn.execute(
            "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
            " balance_after, success, feature, effects)"
            " SELECT user_id, 'deduct', amount, ?, 0, 1, ?, json_object('usage', amount) FROM ("
            " SELECT t.user_id, CASE WHEN j.j = 1 THEN t.monthly_tokens_used - 2 ELSE 1 END"
            " AS amount FROM user_tokens AS t,"
            " (SELECT 1 AS j UNION ALL SELECT 2 UNION ALL SELECT 3) AS j ORDER BY 1, j.j)",
            (stored(last_month), FEATURE),
        )
        conn.execute(
            "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
            " balance_after, success, feature)"
            " SELECT user_id, 'deduct', 500, ?, 0, 0, ? FROM user_tokens"
            " WHERE substr(user_id, -2) = '00'",
            (stored(system_clock() - timedelta(minutes=5)), FEATURE),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return path


def against_the_seed(
    context: Context, library: Callable[[TokenLedger], object], queries: Sequence[str], what: str
) -> Outcome:
    path = context.shared(operator_file)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with TokenLedger.sqlite(path) as ledger:

            def seed() -> None:
                parameters = seed_parameters()
                for query in queries:
                    conn.execute(query, parameters).fetchall()

            return timed_against(
                seconds_of(lambda: library(ledger)), seconds_of(seed), context.size.rounds, what
            )
    finally:
        conn.close()


@scenarios("sqlite_health", "SQLite health(), {operator_accounts:,} accounts: the seed's query")
def sqlite_health(context: Context) -> Outcome:
    return against_the_seed(context, TokenLedger.health, [SEED_HEALTH], "health check")


@scenarios("sqlite_alerts", "SQLite alerts(), {operator_accounts:,} accounts: the seed's queries")
def sqlite_alerts(context: Context) -> Outcome:
    return against_the_seed(context, TokenLedger.alerts, SEED_ALERTS, "three alerts")


@scenarios(
    "sqlite_reconcile", "SQLite reconcile(), {operator_accounts:,} accounts: one grouped query"
)
def sqlite_reconcile(context: Context) -> Outcome:
    return against_the_seed(context, TokenLedger.reconcile, [GROUPED_RECONCILE], "GROUP BY")
