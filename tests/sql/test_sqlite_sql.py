"""The SQLite SQL: plain SQL any client can install, its triggers for outside writers, the view."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import subprocess
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest.mock import patch

import pytest

from token_ledger import (
    InsufficientTokens,
    InvalidInput,
    StorageError,
    TokenLedger,
    install_sqlite_sql,
)
from token_ledger import operations as ledger_operations
from token_ledger.clock import system_clock
from token_ledger.sql import sqlite_script
from token_ledger.sqlite import format_instant
from token_ledger.testing import MovableClock

UTC = timezone.utc
LONG_AGO = MovableClock(system_clock() - timedelta(days=70))
OBJECTS = [
    ("trigger", "auto_monthly_reset_trigger_insert"),
    ("trigger", "auto_monthly_reset_trigger_update"),
    ("view", "token_ledger_now"),
    ("view", "user_tokens_with_auto_reset"),
]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A ledger file with the SQL installed and two accounts opened seventy days ago."""
    path = tmp_path / "tokens.db"
    with TokenLedger.sqlite(path, clock=LONG_AGO) as old:
        old.open_account("u1", monthly_limit=50)
        old.deduct("u1", 30)
        old.open_account("anchored", monthly_limit=50, reset_anchor=LONG_AGO())
        old.deduct("anchored", 10)
    with closing(connect(path)) as conn:
        install_sqlite_sql(conn)
    return path


def connect(path: Path) -> sqlite3.Connection:
    """A plain connection: no function of the application is registered."""
    return sqlite3.connect(path, isolation_level=None)


def objects(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger') ORDER BY name"
    ).fetchall()


def test_installing_twice_leaves_each_object_once(path: Path) -> None:
    conn = connect(path)
    install_sqlite_sql(conn)

    assert objects(conn) == OBJECTS


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 command-line shell")
def test_the_sqlite3_shell_installs_the_script(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    TokenLedger.sqlite(path).close()

    subprocess.run(["sqlite3", "-bail", str(path)], input=sqlite_script(), text=True, check=True)

    assert objects(connect(path)) == OBJECTS


def test_installing_needs_the_ledgers_tables(tmp_path: Path) -> None:
    conn = connect(tmp_path / "empty.db")

    with pytest.raises(StorageError, match=r"tables are missing.*user_tokens\.reset_anchor"):
        install_sqlite_sql(conn)
    assert objects(conn) == []


def test_installing_needs_this_releases_columns(tmp_path: Path) -> None:
    """The view shows spending_windows, which only migration 0005 adds."""
    path = tmp_path / "tokens.db"
    TokenLedger.sqlite(path).close()
    conn = connect(path)
    conn.execute("ALTER TABLE user_tokens DROP COLUMN spending_windows")

    with pytest.raises(StorageError, match=r"older than this SQL \(no user_tokens\.spending_w"):
        install_sqlite_sql(conn)
    assert objects(conn) == []


def test_installing_refuses_a_connection_inside_a_transaction(path: Path) -> None:
    conn = connect(path)
    conn.execute("BEGIN")

    with pytest.raises(InvalidInput, match="outside any transaction"):
        install_sqlite_sql(conn)


def test_an_update_of_last_months_row_resets_it_and_keeps_the_writers_change(
    path: Path,
) -> None:
    conn = connect(path)

    # no updated_at: the trigger judges the write by token_ledger_now, the database clock
    conn.execute("UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used + 5")

    with TokenLedger.sqlite(path) as app:
        account = app.get_account("u1")
        now = app.now()
        assert (account.monthly_tokens_used, account.last_monthly_reset) == (
            5,
            app.status("u1").period_start,
        )
        assert now - timedelta(minutes=5) < account.updated_at <= now
        reset = app.history("u1", operation_type="reset")
        assert [(e.amount, e.effects.usage, e.balance_after) for e in reset] == [(30, -30, 50)]
        assert reset[0].operation_context["period_start"] == (
            account.last_monthly_reset.isoformat(timespec="microseconds")
        )
        anchored = app.get_account("anchored")
        assert anchored.monthly_tokens_used == 15  # anniversaries are the library's
        assert app.history("anchored", operation_type="reset") == []


def test_a_write_with_updated_at_is_judged_at_that_instant(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with TokenLedger.sqlite(path, clock=MovableClock(datetime(2026, 1, 20, tzinfo=UTC))) as app:
        app.open_account("u1", monthly_limit=50)
        app.deduct("u1", 30)
    conn = connect(path)
    install_sqlite_sql(conn)

    writes = [
        (31, datetime(2026, 1, 31, 23, 59, tzinfo=UTC)),
        (33, datetime(2026, 2, 1, tzinfo=UTC)),
    ]
    for used, instant in writes:
        conn.execute(
            "UPDATE user_tokens SET monthly_tokens_used = ?, updated_at = ?",
            (used, format_instant(instant)),
        )

    assert conn.execute(
        "SELECT monthly_tokens_used, last_monthly_reset FROM user_tokens"
    ).fetchall() == [(2, "2026-02-01 00:00:00.000000+00:00")]
    assert conn.execute(
        "SELECT amount, created_at, effects FROM token_transactions WHERE operation_type = 'reset'"
    ).fetchall() == [(31, "2026-02-01 00:00:00.000000+00:00", '{"usage":-31}')]


def test_an_update_that_sets_the_period_itself_is_left_alone(path: Path) -> None:
    conn = connect(path)

    conn.execute(
        "UPDATE user_tokens SET monthly_tokens_used = 0,"
        " last_monthly_reset = strftime('%Y-%m-01 00:00:00.000000+00:00', 'now')"
        " WHERE user_id = 'u1'"
    )

    resets = "SELECT count(*) FROM token_transactions WHERE operation_type = 'reset'"
    assert conn.execute(resets).fetchone() == (0,)


def test_an_insert_for_an_ended_month_starts_the_current_one(path: Path) -> None:
    conn = connect(path)

    conn.execute(
        "INSERT INTO user_tokens (user_id, monthly_limit, monthly_tokens_used,"
        " last_monthly_reset, updated_at) VALUES ('imported', 10, 4,"
        " '2025-03-01 00:00:00.000000+00:00', strftime('%Y-%m-%d %H:%M:%f000+00:00', 'now'))"
    )

    with TokenLedger.sqlite(path) as app:
        account = app.get_account("imported")
        assert (account.monthly_tokens_used, account.last_monthly_reset) == (
            0,
            app.status("imported").period_start,
        )
        assert [(e.operation_type, e.amount) for e in app.history("imported")] == [("reset", 4)]


def test_the_view_shows_what_status_shows_for_calendar_accounts(path: Path) -> None:
    with TokenLedger.sqlite(path) as app:
        app.open_account("current", monthly_limit=50)
        app.deduct("current", 7)
        app.grant("current", 20, expires_at=system_clock() + timedelta(days=1))
        app.reserve("current", 5)
        rows = (
            connect(path)
            .execute(
                "SELECT user_id, monthly_tokens_used, last_monthly_reset, grant_balance,"
                " reserved_tokens FROM user_tokens_with_auto_reset WHERE reset_anchor IS NULL"
                " ORDER BY user_id"
            )
            .fetchall()
        )
        statuses = [app.status(row[0]) for row in rows]

    assert [row[0] for row in rows] == ["current", "u1"]
    assert [row[1:] for row in rows] == [
        (s.monthly_used, format_instant(s.period_start), s.grant_balance, s.reserved)
        for s in statuses
    ]


def test_the_view_has_every_column_of_user_tokens_in_order(path: Path) -> None:
    """A later migration that adds a column to user_tokens fails here until the SQL has it."""
    conn = connect(path)

    def columns(name: str) -> list[str]:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]

    assert columns("user_tokens_with_auto_reset") == columns("user_tokens")


def organisation_files(tmp_path: Path, reset_by_library: bool) -> Path:
    """An organisation with two members and its own spending, and an account with windows,
    written on 2026-01-30 (a Friday): a ledger file whose month has ended by 2026-02-01."""
    clock = MovableClock(datetime(2026, 1, 30, 12, tzinfo=UTC))
    path = tmp_path / ("library.db" if reset_by_library else "sql.db")
    with TokenLedger.sqlite(path, clock=clock) as app:
        app.open_account("acme", monthly_limit=100)
        app.open_account("alice", monthly_limit=50, organisation_id="acme")
        app.open_account("bob", monthly_limit=30, organisation_id="acme")
        app.deduct("alice", 20)
        app.deduct("bob", 10)
        app.deduct("acme", 5)
        app.open_account("capped", monthly_limit=50, window_caps={"hour": 10, "week": 25})
        app.deduct("capped", 9)
        if reset_by_library:
            clock.set(datetime(2026, 2, 1, 9, tzinfo=UTC))
            for user_id in ("alice", "acme", "capped"):
                assert app.reset_if_needed(user_id)
    return path


def test_members_and_their_organisation_each_reset_on_their_own(tmp_path: Path) -> None:
    """Touched by plain SQL, each budget is reset with its own entry, as the library resets
    it: a member's reset leaves its organisation alone, and the other way round."""
    library = connect(organisation_files(tmp_path, reset_by_library=True))
    sql = connect(organisation_files(tmp_path, reset_by_library=False))
    install_sqlite_sql(sql)
    now = format_instant(datetime(2026, 2, 1, 9, tzinfo=UTC))

    sql.execute("UPDATE user_tokens SET updated_at = ? WHERE user_id = 'alice'", (now,))
    assert sql.execute(
        "SELECT user_id, monthly_tokens_used FROM user_tokens ORDER BY user_id"
    ).fetchall() == [("acme", 35), ("alice", 0), ("bob", 10), ("capped", 9)]
    sql.execute("UPDATE user_tokens SET updated_at = ? WHERE user_id = 'acme'", (now,))

    query = "SELECT * FROM {} WHERE user_id <> 'capped' ORDER BY 1"
    for table in ("user_tokens", "token_transactions"):
        assert sql.execute(query.format(table)).fetchall() == (
            library.execute(query.format(table)).fetchall()
        ), table
    resets = sql.execute(
        "SELECT user_id, amount, member_entry_id FROM token_transactions"
        " WHERE operation_type = 'reset' ORDER BY id"
    )
    assert resets.fetchall() == [("alice", 20, None), ("acme", 35, None)]


def test_windows_are_left_as_stored_and_read_as_the_library_reads_them(tmp_path: Path) -> None:
    """The trigger's reset writes no window; the library starts a window again lazily, so
    it reads the stored ones as it reads those it started again itself: the hour that has
    ended as nothing used, the week that runs across the month's end with its 9."""
    library_path = organisation_files(tmp_path, reset_by_library=True)
    sql_path = organisation_files(tmp_path, reset_by_library=False)
    sql = connect(sql_path)
    install_sqlite_sql(sql)
    stored = "SELECT spending_windows FROM user_tokens WHERE user_id = 'capped'"
    windows = sql.execute(stored).fetchone()

    sql.execute(
        "UPDATE user_tokens SET updated_at = ? WHERE user_id = 'capped'",
        (format_instant(datetime(2026, 2, 1, 9, tzinfo=UTC)),),
    )

    assert sql.execute(stored).fetchone() == windows
    assert windows != connect(library_path).execute(stored).fetchone()  # the library's rolled
    query = (
        "SELECT operation_type, amount, created_at, balance_after, operation_context, effects"
        " FROM token_transactions WHERE user_id = 'capped' ORDER BY id",
        "SELECT user_id, monthly_limit, monthly_tokens_used, last_monthly_reset"
        " FROM user_tokens WHERE user_id = 'capped'",
    )
    for each in query:
        assert sql.execute(each).fetchall() == connect(library_path).execute(each).fetchall()
    clock = MovableClock(datetime(2026, 2, 1, 10, tzinfo=UTC))
    statuses = []
    for file in (sql_path, library_path):
        with TokenLedger.sqlite(file, clock=clock) as app:
            statuses.append(app.status("capped"))
            assert app.deduct("capped", 10).success  # the hour's whole cap
            with pytest.raises(InsufficientTokens):
                app.deduct("capped", 7)  # the week has 6 left
            assert app.reconcile() == []
    assert statuses[0] == statuses[1]
    assert [(w.unit, w.used, w.remaining) for w in statuses[0].windows] == [
        ("hour", 0, 10),
        ("week", 9, 16),
    ]
    after = "SELECT * FROM user_tokens WHERE user_id = 'capped'"
    assert sql.execute(after).fetchall() == connect(library_path).execute(after).fetchall()


def test_rows_with_a_zone_or_a_rollover_cap_are_left_to_the_library(tmp_path: Path) -> None:
    """Their periods need the library's calendar, their resets write a grant: the triggers
    write nothing for them, and the view shows them as stored."""
    path = tmp_path / "tokens.db"
    with TokenLedger.sqlite(path, clock=LONG_AGO) as old:
        old.open_account("zoned", monthly_limit=50, time_zone="Pacific/Auckland")
        old.deduct("zoned", 30)
        old.open_account("capped", monthly_limit=50, rollover_cap=20)
        old.deduct("capped", 30)
    conn = connect(path)
    install_sqlite_sql(conn)
    before = conn.execute("SELECT * FROM user_tokens ORDER BY user_id").fetchall()

    conn.execute("UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used")
    conn.execute(
        "INSERT INTO user_tokens (user_id, monthly_limit, monthly_tokens_used,"
        " last_monthly_reset, updated_at, time_zone) VALUES ('imported', 10, 4,"
        " '2025-03-01 00:00:00.000000+00:00', strftime('%Y-%m-%d %H:%M:%f000+00:00', 'now'),"
        " 'Asia/Kathmandu')"
    )

    rows = conn.execute("SELECT * FROM user_tokens WHERE user_id <> 'imported' ORDER BY 1")
    assert rows.fetchall() == before
    assert conn.execute(
        "SELECT count(*) FROM token_transactions WHERE operation_type = 'reset'"
    ).fetchone() == (0,)
    view = conn.execute(
        "SELECT user_id, monthly_tokens_used, last_monthly_reset, time_zone, rollover_cap"
        " FROM user_tokens_with_auto_reset ORDER BY user_id"
    ).fetchall()
    assert view == [
        ("capped", 30, before[0][3], None, 20),
        ("imported", 4, "2025-03-01 00:00:00.000000+00:00", "Asia/Kathmandu", 0),
        ("zoned", 30, before[1][3], "Pacific/Auckland", 0),
    ]


def test_a_reset_by_the_trigger_writes_off_what_expired_as_the_library_does(
    tmp_path: Path,
) -> None:
    """The same account in two files: one touched by plain SQL, one reset by the library."""
    clock = MovableClock(datetime(2026, 1, 20, tzinfo=UTC))
    for name in ("sql.db", "library.db"):
        ids = map("id-{}".format, itertools.count())
        with (
            TokenLedger.sqlite(tmp_path / name, clock=clock) as app,
            patch.object(ledger_operations, "new_id", ids.__next__),
        ):
            clock.set(datetime(2026, 1, 20, tzinfo=UTC))
            app.open_account("u1", monthly_limit=50)
            app.deduct("u1", 30)
            app.grant("u1", 20, expires_at=datetime(2026, 1, 25, tzinfo=UTC))
            app.grant("u1", 5)
            app.reserve("u1", 7, ttl=timedelta(days=2))
            app.reserve("u1", 3, ttl=timedelta(days=30))
            if name == "library.db":
                clock.set(datetime(2026, 2, 3, tzinfo=UTC))
                assert app.reset_if_needed("u1")
    sql = connect(tmp_path / "sql.db")
    install_sqlite_sql(sql)

    sql.execute(
        "UPDATE user_tokens SET updated_at = ?", (format_instant(datetime(2026, 2, 3, tzinfo=UTC)),)
    )

    library = connect(tmp_path / "library.db")
    for table in ("user_tokens", "token_transactions", "token_grants", "token_reservations"):
        query = f"SELECT * FROM {table} ORDER BY 1"
        assert sql.execute(query).fetchall() == library.execute(query).fetchall(), table
    kinds = (
        "SELECT operation_type FROM token_transactions WHERE created_at >= '2026-02' ORDER BY id"
    )
    assert sql.execute(kinds).fetchall() == [("reset",), ("expire",), ("release",)]


def test_a_stray_update_of_a_balance_over_a_write_off_never_takes_it_below_zero(
    tmp_path: Path,
) -> None:
    """Found by the shortcut tests: a writer lowering grant_balance on a row whose reset
    also writes off an expired grant broke the CHECK; the balance stops at 0 instead."""
    path = tmp_path / "tokens.db"
    with TokenLedger.sqlite(path, clock=LONG_AGO) as old:
        old.open_account("u1", monthly_limit=50)
        old.grant("u1", 1, expires_at=LONG_AGO() + timedelta(days=1))
    with closing(connect(path)) as conn:
        install_sqlite_sql(conn)
        now = format_instant(system_clock())
        conn.execute(
            "UPDATE user_tokens SET grant_balance = max(0, grant_balance - 1), updated_at = ?",
            (now,),
        )

        assert conn.execute("SELECT grant_balance FROM user_tokens").fetchall() == [(0,)]
        kinds = conn.execute("SELECT operation_type FROM token_transactions ORDER BY id")
        assert [kind for (kind,) in kinds] == ["grant", "reset", "expire"]
