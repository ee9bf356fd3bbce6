"""The PostgreSQL SQL: installing it, its triggers for outside writers, and its functions."""

from __future__ import annotations

import contextlib
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import errors, sql

from postgres.support import wait_for_lock_wait
from postgres_server import Database
from sql.support import connect_to
from token_ledger import (
    InsufficientTokens,
    StorageError,
    Threshold,
    TokenLedger,
    UnknownTimeZone,
    install_postgres_sql,
)
from token_ledger.clock import system_clock
from token_ledger.postgres import PostgresRepository
from token_ledger.settling import rollover_grant_id
from token_ledger.sql import MIGRATION_LOCK_KEY, postgres_script
from token_ledger.testing import MovableClock

pytestmark = pytest.mark.postgres

UTC = timezone.utc
LONG_AGO = MovableClock(system_clock() - timedelta(days=70))
COLUMNS = """
    SELECT column_name, data_type FROM information_schema.columns
    WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position
"""


def ledger(database: Database, schema: str, clock: Any = system_clock) -> TokenLedger:
    return TokenLedger.postgres(database.url, schema=schema, clock=clock)


def stored(pg: psycopg.Connection[Any], user_id: str) -> tuple[Any, ...]:
    row = pg.execute(
        "SELECT monthly_tokens_used, last_monthly_reset, updated_at FROM user_tokens"
        " WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def resets(pg: psycopg.Connection[Any], user_id: str) -> list[tuple[Any, ...]]:
    return pg.execute(
        "SELECT amount, operation_context->>'previous_used', effects FROM token_transactions"
        " WHERE user_id = %s AND operation_type = 'reset' ORDER BY id",
        (user_id,),
    ).fetchall()


# installing


def test_installing_twice_leaves_the_seed_objects_once(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    install_postgres_sql(pg, schema=sql_schema)

    triggers = pg.execute(
        "SELECT trigger_name, event_manipulation, action_timing FROM information_schema.triggers"
        " WHERE event_object_schema = %s ORDER BY trigger_name",
        (sql_schema,),
    ).fetchall()
    assert triggers == [
        ("auto_monthly_reset_trigger_insert", "INSERT", "BEFORE"),
        ("auto_monthly_reset_trigger_update", "UPDATE", "BEFORE"),
    ]
    functions = {
        row[0]
        for row in pg.execute(
            "SELECT routine_name FROM information_schema.routines WHERE routine_schema = %s",
            (sql_schema,),
        )
    }
    assert {
        "auto_reset_monthly_tokens",
        "reset_user_tokens_if_needed",
        "check_and_reset_monthly_tokens",
        "deduct_tokens",
    } <= functions


def test_the_view_has_every_column_of_user_tokens_in_order(
    sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """A later migration that adds a column to user_tokens fails here until the SQL has it."""
    table = pg.execute(COLUMNS, (sql_schema, "user_tokens")).fetchall()

    assert pg.execute(COLUMNS, (sql_schema, "user_tokens_with_auto_reset")).fetchall() == table


def test_installing_over_the_sql_of_an_older_release_adds_the_new_columns(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """A function's columns cannot change in place: the older view and function are
    replaced, and an install of the same release replaces nothing."""
    pg.execute("DROP VIEW user_tokens_with_auto_reset")
    pg.execute("DROP FUNCTION user_tokens_with_auto_reset_at(timestamptz)")
    pg.execute(
        "CREATE FUNCTION user_tokens_with_auto_reset_at(p_now timestamptz) RETURNS TABLE ("
        " user_id text, monthly_limit bigint, monthly_tokens_used bigint,"
        " last_monthly_reset timestamptz, reset_anchor timestamptz, created_at timestamptz,"
        " updated_at timestamptz, overage_limit bigint, grant_balance bigint,"
        " reserved_tokens bigint) LANGUAGE sql STABLE AS $$ SELECT user_id, monthly_limit,"
        " monthly_tokens_used, last_monthly_reset, reset_anchor, created_at, updated_at,"
        " overage_limit, grant_balance, reserved_tokens FROM user_tokens $$"
    )
    pg.execute(
        "CREATE VIEW user_tokens_with_auto_reset AS"
        " SELECT * FROM user_tokens_with_auto_reset_at(now())"
    )

    install_postgres_sql(pg, schema=sql_schema)
    view_oid = pg.execute("SELECT 'user_tokens_with_auto_reset'::regclass::oid").fetchone()
    install_postgres_sql(pg, schema=sql_schema)

    table = pg.execute(COLUMNS, (sql_schema, "user_tokens")).fetchall()
    assert pg.execute(COLUMNS, (sql_schema, "user_tokens_with_auto_reset")).fetchall() == table
    assert pg.execute("SELECT 'user_tokens_with_auto_reset'::regclass::oid").fetchone() == view_oid


def test_rollover_grants_have_the_ids_the_library_derives(pg: psycopg.Connection[Any]) -> None:
    cases = [
        ("u1", datetime(2026, 2, 1, tzinfo=UTC)),
        ("名前 with spaces", datetime(2026, 1, 31, 11, tzinfo=UTC)),
        ("x" * 255, datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)),
    ]

    for user_id, start in cases:
        found = pg.execute(
            "SELECT token_ledger_rollover_grant_id(%s, %s)", (user_id, start)
        ).fetchone()
        assert found == (rollover_grant_id(user_id, start),)


def test_installing_needs_the_ledgers_tables(
    postgres_database: Database, request: pytest.FixtureRequest
) -> None:
    schema = postgres_database.new_schema(request)
    with postgres_database.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        with pytest.raises(StorageError, match="tables are missing"):
            install_postgres_sql(conn, schema=schema)


def test_installing_needs_migration_5(
    postgres_database: Database, request: pytest.FixtureRequest
) -> None:
    """deduct_tokens reads organisation_id and spending_windows, which migration 5 adds:
    tables a release before it left are refused, and the SQL is not installed."""
    schema = postgres_database.new_schema(request)
    PostgresRepository(postgres_database.url, schema=schema).close()
    with connect_to(postgres_database, schema) as conn:
        conn.execute("DELETE FROM token_ledger_migrations WHERE version >= 5")

        with pytest.raises(StorageError, match="older than this SQL"):
            install_postgres_sql(conn, schema=schema)
        assert conn.execute(
            "SELECT count(*) FROM information_schema.routines WHERE routine_schema = %s"
            " AND routine_name = 'deduct_tokens'",
            (schema,),
        ).fetchone() == (0,)


def test_installing_waits_for_a_migration_that_holds_the_migrations_lock(
    postgres_database: Database, sql_schema: str
) -> None:
    """The installed script takes ``MIGRATION_LOCK_KEY``, as ``PostgresRepository`` migrating."""
    with postgres_database.connect() as migrating, postgres_database.connect() as installing:
        installing.execute("SET lock_timeout = '200ms'")
        with migrating.transaction():
            migrating.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            with pytest.raises(StorageError, match="lock timeout"):
                install_postgres_sql(installing, schema=sql_schema)

        install_postgres_sql(installing, schema=sql_schema)  # the lock released


def test_an_unknown_time_zone_is_refused_before_anything_runs() -> None:
    with pytest.raises(UnknownTimeZone):
        postgres_script(timezone="Mars/Olympus_Mons")


def test_any_schema_name_is_quoted(
    postgres_database: Database, request: pytest.FixtureRequest
) -> None:
    schema = f'tl_test_{uuid.uuid4().hex[:8]} "odd" $$ name'
    request.addfinalizer(lambda: postgres_database.drop_schema(schema))
    PostgresRepository(postgres_database.url, schema=schema).close()
    with postgres_database.connect() as conn:
        install_postgres_sql(conn, schema=schema, timezone="Europe/Berlin")
    with ledger(postgres_database, schema) as odd:
        odd.open_account("u1", monthly_limit=5)

    with connect_to(postgres_database, schema) as conn:
        assert conn.execute("SELECT * FROM deduct_tokens('u1', 2)").fetchone()[:2] == (True, 3)
        assert conn.execute("SELECT token_ledger_timezone()").fetchone() == ("Europe/Berlin",)


# the triggers, for writers without the library


def test_an_update_of_last_months_row_resets_it_and_keeps_the_writers_change(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("u1", monthly_limit=50)
        old.deduct("u1", 30)

    # no updated_at: the trigger judges the write by the database clock
    pg.execute("UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used + 5")

    used, period_start, updated_at = stored(pg, "u1")
    assert used == 5
    month_start = pg.execute("SELECT date_trunc('month', now())").fetchone()
    assert (period_start,) == month_start
    assert updated_at > system_clock() - timedelta(minutes=5)
    assert resets(pg, "u1") == [(30, "30", {"usage": -30})]


def test_a_write_with_updated_at_is_judged_at_that_instant(
    sql_schema: str, postgres_database: Database, pg: psycopg.Connection[Any]
) -> None:
    with ledger(
        postgres_database, sql_schema, MovableClock(datetime(2026, 1, 20, tzinfo=UTC))
    ) as a:
        a.open_account("u1", monthly_limit=50)
        a.deduct("u1", 30)

    pg.execute("UPDATE user_tokens SET monthly_tokens_used = 31, updated_at = '2026-01-31T23:00Z'")
    assert resets(pg, "u1") == []
    pg.execute("UPDATE user_tokens SET monthly_tokens_used = 33, updated_at = '2026-02-01T00:00Z'")

    assert stored(pg, "u1")[:2] == (2, datetime(2026, 2, 1, tzinfo=UTC))
    assert resets(pg, "u1") == [(31, "31", {"usage": -31})]


def test_a_write_is_judged_by_the_accounts_own_zone_and_rolls_over(
    sql_schema: str, postgres_database: Database, pg: psycopg.Connection[Any]
) -> None:
    """Auckland's February starts eleven hours before UTC's; what January left of the
    allowance, up to the cap, becomes a grant that expires with Auckland's February."""
    with ledger(
        postgres_database, sql_schema, MovableClock(datetime(2026, 1, 20, tzinfo=UTC))
    ) as a:
        a.open_account("u1", monthly_limit=50, time_zone="Pacific/Auckland", rollover_cap=15)
        a.deduct("u1", 40)

    pg.execute("UPDATE user_tokens SET updated_at = '2026-01-31T10:00Z'")
    assert resets(pg, "u1") == []
    pg.execute("UPDATE user_tokens SET updated_at = '2026-01-31T12:00Z'")

    assert stored(pg, "u1")[:2] == (0, datetime(2026, 1, 31, 11, tzinfo=UTC))
    grant_id = rollover_grant_id("u1", datetime(2026, 1, 31, 11, tzinfo=UTC))
    assert resets(pg, "u1") == [(40, "40", {"usage": -40, "grants": {grant_id: 10}})]
    assert pg.execute(
        "SELECT g.remaining, g.expires_at, g.reason, t.grant_balance FROM token_grants AS g"
        " JOIN user_tokens AS t USING (user_id)"
    ).fetchall() == [(10, datetime(2026, 2, 28, 11, tzinfo=UTC), "rollover", 10)]


def test_an_update_that_sets_the_period_itself_is_left_alone(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("u1", monthly_limit=50)
        old.deduct("u1", 30)

    pg.execute("UPDATE user_tokens SET monthly_tokens_used = 0, last_monthly_reset = now()")

    assert stored(pg, "u1")[0] == 0
    assert resets(pg, "u1") == []


def test_inserts_start_the_current_period(pg: psycopg.Connection[Any]) -> None:
    pg.execute("INSERT INTO user_tokens (user_id, monthly_limit) VALUES ('new', 10)")
    pg.execute(
        "INSERT INTO user_tokens (user_id, monthly_limit, monthly_tokens_used,"
        " last_monthly_reset) VALUES ('imported', 10, 4, '2025-03-01Z')"
    )
    # an existing account: nothing is inserted, so nothing is reset or logged
    pg.execute(
        "INSERT INTO user_tokens (user_id, monthly_limit, last_monthly_reset)"
        " VALUES ('new', 10, '2025-03-01Z') ON CONFLICT (user_id) DO NOTHING"
    )

    month_start = pg.execute("SELECT date_trunc('month', now())").fetchone()[0]
    assert stored(pg, "new")[:2] == (0, month_start)
    assert stored(pg, "imported")[:2] == (0, month_start)
    assert resets(pg, "new") == []
    assert resets(pg, "imported") == [(4, "4", {"usage": -4})]


def test_the_view_shows_what_status_shows(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("stale", monthly_limit=50)
        old.deduct("stale", 30)
        old.open_account("anchored", monthly_limit=50, reset_anchor=LONG_AGO())
        old.deduct("anchored", 10)
    with ledger(postgres_database, sql_schema) as app:
        app.open_account("current", monthly_limit=50)
        app.deduct("current", 7)
        app.grant("current", 20, expires_at=system_clock() + timedelta(days=1))
        app.reserve("current", 5)

        rows = pg.execute(
            "SELECT user_id, monthly_tokens_used, last_monthly_reset, grant_balance,"
            " reserved_tokens FROM user_tokens_with_auto_reset ORDER BY user_id"
        ).fetchall()
        statuses = [app.status(row[0]) for row in rows]

    assert [row[0] for row in rows] == ["anchored", "current", "stale"]
    assert [row[1:] for row in rows] == [
        (s.monthly_used, s.period_start, s.grant_balance, s.reserved) for s in statuses
    ]


def test_members_and_their_organisation_each_reset_on_their_own(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """A write of a member's row resets the member, with its entry, and leaves its
    organisation as it was: each budget resets on its own, as the library resets it."""
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("acme", monthly_limit=100)
        old.open_account("alice", monthly_limit=50, organisation_id="acme")
        old.open_account("bob", monthly_limit=30, organisation_id="acme")
        old.deduct("alice", 20)
        old.deduct("bob", 10)

    pg.execute("UPDATE user_tokens SET updated_at = now() WHERE user_id = 'alice'")

    assert stored(pg, "alice")[0] == 0
    assert stored(pg, "acme")[0] == 30
    assert resets(pg, "alice") == [(20, "20", {"usage": -20})]
    assert resets(pg, "acme") == []
    assert pg.execute("SELECT reset_user_tokens_if_needed('acme')").fetchone() == (True,)
    assert resets(pg, "acme") == [(30, "30", {"usage": -30})]
    assert pg.execute("SELECT auto_reset_monthly_tokens()").fetchone() == (1,)  # bob
    assert pg.execute(
        "SELECT count(*) FROM token_transactions WHERE operation_type = 'reset'"
        " AND member_entry_id IS NOT NULL"
    ).fetchone() == (0,)
    with ledger(postgres_database, sql_schema) as app:
        assert app.deduct("alice", 40).success  # 40 of acme's 100 too
        assert app.status("acme").monthly_used == 40
        assert app.reconcile() == []


def test_windows_are_left_as_stored_and_read_as_the_library_reads_them(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """The trigger's reset leaves spending_windows as stored; the library reads a window
    that has ended as nothing used, and the week that runs across the month's end (from
    Monday, 2026-01-26) with what it used."""
    clock = MovableClock(datetime(2026, 1, 30, 12, tzinfo=UTC))
    with ledger(postgres_database, sql_schema, clock) as app:
        app.open_account("capped", monthly_limit=50, window_caps={"hour": 10, "week": 25})
        app.deduct("capped", 9)
    windows = "SELECT spending_windows FROM user_tokens"
    (stored_windows,) = pg.execute(windows).fetchone() or (None,)

    pg.execute("UPDATE user_tokens SET updated_at = '2026-02-01T09:00Z'")

    assert stored(pg, "capped")[:2] == (0, datetime(2026, 2, 1, tzinfo=UTC))
    assert pg.execute(windows).fetchone() == (stored_windows,)
    assert pg.execute("SELECT spending_windows FROM user_tokens_with_auto_reset").fetchone() == (
        stored_windows,
    )
    clock.set(datetime(2026, 2, 1, 10, tzinfo=UTC))
    with ledger(postgres_database, sql_schema, clock) as app:
        status = app.status("capped")
        assert [(w.unit, w.used, w.remaining) for w in status.windows] == [
            ("hour", 0, 10),
            ("week", 9, 16),
        ]
        assert app.deduct("capped", 10).success
        with pytest.raises(InsufficientTokens):
            app.deduct("capped", 7)  # the week has 6 left
        assert app.reconcile() == []


def test_the_bulk_reset_locks_organisations_before_their_members(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """A member's writer locks its path root first; so does auto_reset_monthly_tokens,
    level by level, whatever the user_ids: while it waits for an organisation that a
    writer holds, it holds none of the members that writer will lock next."""
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("zz-root", monthly_limit=100)
        old.open_account("mm-org", monthly_limit=100, organisation_id="zz-root")
        old.open_account("aa-member", monthly_limit=100, organisation_id="mm-org")
        old.open_account("plain", monthly_limit=100)
    with connect_to(postgres_database, sql_schema) as writer:
        resetting = psycopg.connect(
            postgres_database.url, autocommit=True, application_name="bulk-reset"
        )
        resetting.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(sql_schema)))
        with writer.transaction():
            writer.execute("SELECT FROM user_tokens WHERE user_id = 'zz-root' FOR UPDATE")
            done: list[Any] = []
            bulk = threading.Thread(
                target=lambda: done.append(
                    resetting.execute("SELECT auto_reset_monthly_tokens()").fetchone()
                )
            )
            bulk.start()
            wait_for_lock_wait(postgres_database, "bulk-reset")
            # as the member's writer goes on: the rest of the path, root first
            writer.execute("SET LOCAL lock_timeout = '2s'")
            writer.execute(
                "SELECT user_id FROM user_tokens WHERE user_id IN ('mm-org', 'aa-member')"
                " ORDER BY user_id DESC FOR UPDATE"
            )
        bulk.join()
        resetting.close()
    assert done == [(4,)]


# the functions


def test_the_bulk_reset_reports_its_count_both_ways(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        for n in range(3):
            old.open_account(f"user-{n}", monthly_limit=10)

    assert pg.execute("SELECT auto_reset_monthly_tokens()").fetchall() == [(3,)]
    cursor = pg.execute("SELECT * FROM auto_reset_monthly_tokens()")
    assert ([column.name for column in cursor.description], cursor.fetchall()) == (
        ["reset_count"],
        [(0,)],
    )


def test_resetting_one_account_says_whether_it_did(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("u1", monthly_limit=10)

    assert pg.execute("SELECT reset_user_tokens_if_needed('u1')").fetchone() == (True,)
    assert pg.execute("SELECT reset_user_tokens_if_needed('u1')").fetchone() == (False,)
    with pytest.raises(errors.NoDataFound, match="no token account for user ghost"):
        pg.execute("SELECT reset_user_tokens_if_needed('ghost')")


def test_a_refused_deduction_is_a_result_and_its_entry_is_kept(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    with ledger(postgres_database, sql_schema) as app:
        app.open_account("u1", monthly_limit=10)

    with pg.transaction():
        refused = pg.execute("SELECT * FROM deduct_tokens('u1', 11, 'chat')").fetchone()

    assert refused is not None
    assert refused[:2] == (False, 10)
    entry = pg.execute(
        "SELECT success, amount, feature, balance_after FROM token_transactions WHERE id = %s",
        (refused[2],),
    ).fetchone()
    assert entry == (False, 11, "chat", 10)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ("deduct_tokens('u1', 0)", errors.InvalidParameterValue, "amount must be between"),
        ("deduct_tokens(' ', 1)", errors.InvalidParameterValue, "user_id must be a non-empty"),
        ("deduct_tokens('u1', 1, '')", errors.InvalidParameterValue, "feature must be"),
        ("deduct_tokens('u1', 1, NULL, '[1]')", errors.InvalidParameterValue, "JSON object"),
        ("deduct_tokens('ghost', 1)", errors.NoDataFound, "no token account"),
        ("deduct_tokens('u1', 2, NULL, NULL, 'k')", errors.UniqueViolation, "already used"),
    ],
)
def test_deduct_tokens_refuses_what_the_library_refuses(
    postgres_database: Database,
    sql_schema: str,
    pg: psycopg.Connection[Any],
    call: str,
    error: type[Exception],
    message: str,
) -> None:
    with ledger(postgres_database, sql_schema) as app:
        app.open_account("u1", monthly_limit=10)
        app.deduct("u1", 1, idempotency_key="k")

    with pytest.raises(error, match=message):
        pg.execute(f"SELECT * FROM {call}")
    assert pg.execute("SELECT count(*) FROM token_transactions").fetchone() == (1,)


def test_sql_and_library_deductions_at_once_never_overspend(
    postgres_database: Database, sql_schema: str
) -> None:
    """Four sessions calling deduct_tokens and four library threads share one account's lock."""
    with ledger(postgres_database, sql_schema) as app:
        app.open_account("hot", monthly_limit=120)
        failures: list[BaseException] = []

        def through_sql() -> None:
            try:
                with connect_to(postgres_database, sql_schema) as conn:
                    for _ in range(15):
                        conn.execute("SELECT * FROM deduct_tokens('hot', 2)")
            except BaseException as error:  # pragma: no cover - reported below
                failures.append(error)

        def through_library() -> None:
            for _ in range(15):
                try:
                    app.deduct("hot", 2)
                except InsufficientTokens:
                    pass
                except BaseException as error:  # pragma: no cover - reported below
                    failures.append(error)

        threads = [threading.Thread(target=f) for f in [through_sql, through_library] * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert failures == []
        assert app.status("hot").monthly_used == 120
        assert sum(e.amount for e in app.history("hot", success=True, limit=1000)) == 120
        assert app.reconcile() == []


# threshold notifications

NOTED = (Threshold(50), Threshold(100), Threshold.nothing_left())
NOTIFICATION_ROW = (
    "SELECT user_id, threshold, period_start, occurrence, created_at, transaction_id,"
    " monthly_used, monthly_limit, total_remaining FROM token_notifications ORDER BY id"
)

threshold_steps = st.lists(
    st.one_of(
        st.tuples(st.just("deduct"), st.sampled_from(["u1", "u2"]), st.integers(1, 40)),
        st.tuples(st.just("set_limit"), st.sampled_from(["u1", "u2"]), st.integers(1, 90)),
        st.tuples(st.just("overage"), st.sampled_from(["u1", "u2"]), st.integers(0, 20)),
        st.tuples(st.just("grant"), st.sampled_from(["u1", "u2"]), st.integers(1, 30)),
        st.tuples(
            st.just("own"),
            st.sampled_from(["u1", "u2"]),
            st.sampled_from([None, "", "30%", "90%,nothing_left"]),
        ),
        st.tuples(st.just("move"), st.sampled_from([timedelta(days=3), timedelta(days=20)])),
    ),
    max_size=25,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=threshold_steps)
def test_deduct_tokens_records_the_notifications_the_library_records(
    postgres_database: Database, request: pytest.FixtureRequest, steps: list[tuple[Any, ...]]
) -> None:
    """The same steps in two schemas: deductions by the library in one, by ``deduct_tokens``
    (installed with the same default thresholds) in the other; both record the same
    notifications, in the same order, for the same entries."""
    clock = MovableClock(datetime(2026, 1, 20, 12, tzinfo=UTC))
    schemas = [postgres_database.new_schema(request) for _ in range(2)]
    ledgers = [
        TokenLedger.postgres(postgres_database.url, schema=s, clock=clock, thresholds=NOTED)
        for s in schemas
    ]
    try:
        with postgres_database.connect() as conn:
            install_postgres_sql(conn, schema=schemas[1], thresholds=NOTED)
        with connect_to(postgres_database, schemas[1]) as pg:
            for ledger_ in ledgers:
                ledger_.open_account("u1", monthly_limit=50)
                ledger_.open_account("u2", monthly_limit=20)
            for kind, *args in steps:
                if kind == "move":
                    clock.advance(args[0])
                    continue
                for side, ledger_ in enumerate(ledgers):
                    user_id, value = args
                    if kind == "deduct" and side == 1:
                        pg.execute(
                            "SELECT * FROM deduct_tokens(%s, %s, NULL, NULL, NULL, %s)",
                            (user_id, value, clock()),
                        )
                    elif kind == "deduct":
                        with contextlib.suppress(InsufficientTokens):
                            ledger_.deduct(user_id, value)
                    elif kind == "set_limit":
                        ledger_.set_limit(user_id, value)
                    elif kind == "overage":
                        ledger_.set_limit(user_id, overage_limit=value)
                    elif kind == "grant":
                        ledger_.grant(user_id, value)
                    else:
                        own = (
                            None
                            if value is None
                            else [Threshold.parse(k) for k in value.split(",") if k]
                        )
                        ledger_.set_thresholds(user_id, own)
            rows = []
            for schema in schemas:
                with connect_to(postgres_database, schema) as conn:
                    rows.append(conn.execute(NOTIFICATION_ROW).fetchall())
        assert rows[0] == rows[1]
        event(f"{len(rows[0])} notifications")
    finally:
        for ledger_ in ledgers:
            ledger_.close()


def test_installed_default_thresholds_are_the_ledgers(
    sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """Without thresholds the SQL records none; an account's own still count."""
    pg.execute("INSERT INTO user_tokens (user_id, monthly_limit) VALUES ('a', 10), ('b', 10)")
    pg.execute("UPDATE user_tokens SET notification_thresholds = '80%' WHERE user_id = 'b'")
    pg.execute("SELECT * FROM deduct_tokens('a', 10)")
    pg.execute("SELECT * FROM deduct_tokens('b', 9)")

    found = pg.execute("SELECT user_id, threshold, occurrence FROM token_notifications")
    assert found.fetchall() == [("b", "80%", 1)]
    assert "'80%,nothing_left'::text" in postgres_script(
        thresholds=[Threshold.nothing_left(), Threshold(80)]
    )


def test_a_stray_update_of_a_balance_over_a_write_off_never_takes_it_below_zero(
    postgres_database: Database, sql_schema: str, pg: psycopg.Connection[Any]
) -> None:
    """Found by the shortcut tests: a writer lowering grant_balance on a row whose reset
    also writes off an expired grant broke the CHECK; the balance stops at 0 instead."""
    with ledger(postgres_database, sql_schema, LONG_AGO) as old:
        old.open_account("u1", monthly_limit=50)
        old.grant("u1", 1, expires_at=LONG_AGO() + timedelta(days=1))

    pg.execute("UPDATE user_tokens SET grant_balance = greatest(0, grant_balance - 1)")

    (balance,) = pg.execute("SELECT grant_balance FROM user_tokens").fetchone() or (None,)
    assert balance == 0
    assert [
        row[0] for row in pg.execute("SELECT operation_type FROM token_transactions ORDER BY id")
    ] == ["grant", "reset", "expire"]
