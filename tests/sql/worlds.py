"""The same operations, once through ``TokenLedger`` and once through SQL alone.

A *world* is one database that a sequence of operations is applied to. The
library world calls :class:`~token_ledger.TokenLedger`. The SQL worlds write
the way a program without the library would: PostgreSQL's through the
installed functions (``deduct_tokens``, ``reset_user_tokens_if_needed``,
``auto_reset_monthly_tokens``) and plain statements that leave resets (and
their rollover) to the triggers; SQLite's through plain statements, the view
and the triggers only, for the accounts its SQL covers, and through the
library for the others (an anchor, a zone of their own, a rollover cap), as a
program on SQLite must. Every operation takes the instant it happens at, as
the library's clock does.

Organisations and windows are the library's to set up: both worlds move members
and cap windows through ``TokenLedger``. The SQL worlds spend from a member (an
account with an ``organisation_id``) or an account with windows as a program
without the library must: PostgreSQL's ``deduct_tokens`` refuses them (the world
checks that it does, with its error, and that nothing was written, then spends
through the library, as the error's hint says), and SQLite's plain statements
leave them to the library, as they cannot charge an organisation or count in a
window. An organisation spends from its own budget through SQL like any account.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime
from typing import Any, Protocol

import psycopg
import pytest
from psycopg.errors import FeatureNotSupported, UniqueViolation

from token_ledger import IdempotencyConflict, InsufficientTokens, ReservationsHeld, TokenLedger
from token_ledger.sqlite import format_instant

# What deduct_tokens says when it refuses an account it does not cover.
NOT_COVERED = "deduct_tokens does not cover account"
THROUGH_THE_LIBRARY = "Deduct through token-ledger"


class World(Protocol):
    def open(
        self,
        user_id: str,
        limit: int,
        anchor: datetime | None,
        zone: str | None,
        cap: int,
        now: datetime,
    ) -> None: ...

    def deduct(
        self, user_id: str, amount: int, feature: str | None, key: str | None, now: datetime
    ) -> None: ...

    def set_limit(self, user_id: str, limit: int, overage: int, now: datetime) -> None: ...

    def set_cap(self, user_id: str, cap: int, now: datetime) -> None: ...

    def reset_one(self, user_id: str, now: datetime) -> None: ...

    def reset_all(self, now: datetime) -> None: ...

    def touch(self, now: datetime) -> None:
        """Rewrite the rows the SQL leaves to the library as they are: nothing happens."""

    def join(self, user_id: str, organisation_id: str | None, now: datetime) -> None:
        """Make ``user_id`` a member of ``organisation_id`` (``None``: of none)."""

    def cap_windows(self, user_id: str, caps: dict[str, int] | None, now: datetime) -> None:
        """Cap the account's hour, day or week windows (``None``: no caps)."""


class LibraryWorld:
    """Every operation is one ``TokenLedger`` call at the given instant."""

    def __init__(self, ledger: TokenLedger, clock: Any) -> None:
        self.ledger = ledger
        self.clock = clock

    def open(
        self,
        user_id: str,
        limit: int,
        anchor: datetime | None,
        zone: str | None,
        cap: int,
        now: datetime,
    ) -> None:
        self.clock.set(now)
        self.ledger.open_account(
            user_id, limit, reset_anchor=anchor, time_zone=zone, rollover_cap=cap
        )

    def deduct(
        self, user_id: str, amount: int, feature: str | None, key: str | None, now: datetime
    ) -> None:
        self.clock.set(now)
        with contextlib.suppress(InsufficientTokens, IdempotencyConflict):
            self.ledger.deduct(user_id, amount, feature=feature, idempotency_key=key)

    def set_limit(self, user_id: str, limit: int, overage: int, now: datetime) -> None:
        self.clock.set(now)
        self.ledger.set_limit(user_id, limit, overage_limit=overage)

    def set_cap(self, user_id: str, cap: int, now: datetime) -> None:
        self.clock.set(now)
        self.ledger.set_limit(user_id, rollover_cap=cap)

    def reset_one(self, user_id: str, now: datetime) -> None:
        self.clock.set(now)
        self.ledger.reset_if_needed(user_id)

    def reset_all(self, now: datetime) -> None:
        self.clock.set(now)
        self.ledger.reset_all_stale(batch_size=2)

    def touch(self, now: datetime) -> None:
        """The library writes nothing that is not a change."""

    def join(self, user_id: str, organisation_id: str | None, now: datetime) -> None:
        self.clock.set(now)
        with contextlib.suppress(ReservationsHeld):  # its organisation holds a share
            self.ledger.move_to_organisation(user_id, organisation_id)

    def cap_windows(self, user_id: str, caps: dict[str, int] | None, now: datetime) -> None:
        self.clock.set(now)
        self.ledger.set_window_caps(user_id, caps)


class PostgresSQLWorld:
    """The installed functions, and plain statements whose resets the triggers write.

    Members and accounts with windows, which ``deduct_tokens`` refuses, are spent from
    through ``library``, a ledger on the same schema, once the refusal is checked.
    """

    def __init__(self, conn: psycopg.Connection[Any], library: LibraryWorld) -> None:
        self.conn = conn  # autocommit, search_path set to the world's schema
        self.library = library
        self.refusals = 0

    def open(
        self,
        user_id: str,
        limit: int,
        anchor: datetime | None,
        zone: str | None,
        cap: int,
        now: datetime,
    ) -> None:
        # No last_monthly_reset: the insert trigger starts the current period, in its zone.
        self.conn.execute(
            "INSERT INTO user_tokens (user_id, monthly_limit, reset_anchor, time_zone,"
            " rollover_cap, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (user_id, limit, anchor, zone, cap, now, now),
        )

    def not_covered(self, user_id: str) -> bool:
        """Whether deduct_tokens refuses the account: a member, or an account with windows."""
        row = self.conn.execute(
            "SELECT organisation_id IS NOT NULL OR spending_windows IS NOT NULL"
            " FROM user_tokens WHERE user_id = %s",
            (user_id,),
        ).fetchone()
        assert row is not None
        return bool(row[0])

    def contents(self) -> list[list[tuple[Any, ...]]]:
        return [
            self.conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in WRITTEN_TABLES
        ]

    def deduct(
        self, user_id: str, amount: int, feature: str | None, key: str | None, now: datetime
    ) -> None:
        # A key stored already is answered first, for any account, as the library answers
        # it: the original entry for a retry, 23505 for another deduction; nothing written.
        call = "SELECT * FROM deduct_tokens(%s, %s, %s, NULL, %s, %s)"
        arguments = (user_id, amount, feature, key, now)
        if self.not_covered(user_id) and not self._key_used(key):
            before = self.contents()
            with pytest.raises(FeatureNotSupported, match=NOT_COVERED) as refused:
                self.conn.execute(call, arguments)
            assert THROUGH_THE_LIBRARY in (refused.value.diag.message_hint or "")
            assert self.contents() == before  # nothing written, not even a pending reset
            self.refusals += 1
            self.library.deduct(user_id, amount, feature, key, now)
            return
        with contextlib.suppress(UniqueViolation):  # the key was used for another deduction
            self.conn.execute(call, arguments)

    def _key_used(self, key: str | None) -> bool:
        if key is None:
            return False
        row = self.conn.execute(
            "SELECT count(*) FROM token_transactions WHERE idempotency_key = %s", (key,)
        ).fetchone()
        return row is not None and row[0] > 0

    def set_limit(self, user_id: str, limit: int, overage: int, now: datetime) -> None:
        """A plan change as a program without the library writes it, stamped as it stamps."""
        with self.conn.transaction():
            before = self.conn.execute(
                "SELECT monthly_limit, overage_limit FROM user_tokens WHERE user_id = %s"
                " FOR UPDATE",
                (user_id,),
            ).fetchone()
            assert before is not None
            # Written when something changes, as the library writes only a changed row;
            # a reset that is due is written by the update trigger.
            self.conn.execute(
                "UPDATE user_tokens SET monthly_limit = %(limit)s, overage_limit = %(overage)s,"
                " updated_at = CASE WHEN updated_at = %(now)s"
                " THEN %(now)s - interval '1 microsecond' ELSE %(now)s END"
                " WHERE user_id = %(user)s AND (monthly_limit <> %(limit)s"
                " OR overage_limit <> %(overage)s OR updated_at <> %(now)s"
                f" OR {PENDING_RESET})",
                {"user": user_id, "limit": limit, "overage": overage, "now": now},
            )
            self.conn.execute(
                "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
                " balance_after, operation_context)"
                " SELECT user_id, 'limit_change', monthly_limit, %(now)s,"
                " greatest(monthly_limit - monthly_tokens_used, 0),"
                " jsonb_build_object('previous_limit', %(previous_limit)s::bigint)"
                " || CASE WHEN %(previous_overage)s::bigint = overage_limit THEN '{}'::jsonb"
                " ELSE jsonb_build_object('previous_overage_limit', %(previous_overage)s::bigint,"
                " 'overage_limit', overage_limit) END"
                " FROM user_tokens WHERE user_id = %(user)s",
                {
                    "user": user_id,
                    "now": now,
                    "previous_limit": before[0],
                    "previous_overage": before[1],
                },
            )

    def set_cap(self, user_id: str, cap: int, now: datetime) -> None:
        """A change of the rollover cap, written like a plan change: a reset that is due
        is the trigger's, with the stored cap's rollover, as the library settles first."""
        with self.conn.transaction():
            before = self.conn.execute(
                "SELECT rollover_cap FROM user_tokens WHERE user_id = %s FOR UPDATE", (user_id,)
            ).fetchone()
            assert before is not None
            self.conn.execute(
                "UPDATE user_tokens SET rollover_cap = %(cap)s,"
                " updated_at = CASE WHEN updated_at = %(now)s"
                " THEN %(now)s - interval '1 microsecond' ELSE %(now)s END"
                " WHERE user_id = %(user)s AND (rollover_cap <> %(cap)s"
                f" OR updated_at <> %(now)s OR {PENDING_RESET})",
                {"user": user_id, "cap": cap, "now": now},
            )
            self.conn.execute(
                "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
                " balance_after, operation_context)"
                " SELECT user_id, 'limit_change', monthly_limit, %(now)s,"
                " greatest(monthly_limit - monthly_tokens_used, 0),"
                " jsonb_build_object('previous_limit', monthly_limit)"
                " || CASE WHEN %(previous_cap)s::bigint = rollover_cap THEN '{}'::jsonb"
                " ELSE jsonb_build_object('previous_rollover_cap', %(previous_cap)s::bigint,"
                " 'rollover_cap', rollover_cap) END"
                " FROM user_tokens WHERE user_id = %(user)s",
                {"user": user_id, "now": now, "previous_cap": before[0]},
            )

    def reset_one(self, user_id: str, now: datetime) -> None:
        self.conn.execute("SELECT reset_user_tokens_if_needed(%s, %s)", (user_id, now))

    def reset_all(self, now: datetime) -> None:
        self.conn.execute("SELECT auto_reset_monthly_tokens(%s)", (now,))

    def touch(self, now: datetime) -> None:
        """Not here: a write that leaves updated_at is judged at the server's clock."""

    def join(self, user_id: str, organisation_id: str | None, now: datetime) -> None:
        self.library.join(user_id, organisation_id, now)

    def cap_windows(self, user_id: str, caps: dict[str, int] | None, now: datetime) -> None:
        self.library.cap_windows(user_id, caps, now)


# What a refused deduct_tokens must leave as it was.
WRITTEN_TABLES = (
    "user_tokens",
    "token_transactions",
    "token_grants",
    "token_reservations",
    "token_notifications",
)


# Whether a reset is pending at %(now)s, by the row's own calendar.
PENDING_RESET = (
    "last_monthly_reset < token_ledger_period_start(%(now)s, reset_anchor,"
    " coalesce(time_zone, token_ledger_timezone()))"
)
MONTH_START = "substr(:now, 1, 7) || '-01 00:00:00.000000+00:00'"
LEFT_TO_THE_LIBRARY = "(reset_anchor IS NOT NULL OR time_zone IS NOT NULL OR rollover_cap > 0)"
# updated_at as the library stamps it: the instant, or a microsecond before it if stored already.
STAMP = (
    "CASE WHEN :now <> updated_at THEN :now"
    " WHEN substr(:now, 21, 6) > '000000'"
    " THEN substr(:now, 1, 20) || printf('%06d', substr(:now, 21, 6) - 1) || '+00:00'"
    " ELSE strftime('%Y-%m-%d %H:%M:%S', substr(:now, 1, 19), '-1 seconds')"
    " || '.999999+00:00' END"
)


class SQLiteSQLWorld:
    """Plain SQL on a SQLite file: the view to decide, the triggers to reset.

    Calendar months in UTC without rollover, the monthly allowance and overage:
    what the SQLite SQL covers. The other accounts (a zone of their own, a
    rollover cap) are left to ``library``, a ledger on the same file.
    """

    def __init__(self, conn: sqlite3.Connection, library: LibraryWorld | None = None) -> None:
        self.conn = conn  # autocommit (isolation_level=None)
        self.library = library

    def left_to_the_library(self, user_id: str) -> bool:
        row = self.conn.execute(
            f"SELECT {LEFT_TO_THE_LIBRARY} FROM user_tokens WHERE user_id = ?", (user_id,)
        ).fetchone()
        return bool(row[0])

    def spent_through_the_library(self, user_id: str) -> bool:
        """A plain SQL deduction spends the account's own allowance only (SQLite has no
        deduct_tokens): an account holding grants (such as the rollover of a cap lowered
        since to 0), a member, whose organisation must be charged too, and an account with
        windows, whose windows must count it, are spent through the library; so are the
        rows left to it. An organisation's own budget is spent by plain SQL."""
        row = self.conn.execute(
            f"SELECT {LEFT_TO_THE_LIBRARY} OR grant_balance > 0 OR organisation_id IS NOT NULL"
            " OR spending_windows IS NOT NULL FROM user_tokens WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        return bool(row[0])

    def _library(self) -> LibraryWorld:
        assert self.library is not None
        return self.library

    def at(self, now: datetime) -> dict[str, object]:
        """Point the view and the triggers' clock at ``now``, as the database clock would be."""
        self.conn.executescript(
            "DROP VIEW token_ledger_now;"
            f" CREATE VIEW token_ledger_now (now) AS SELECT '{format_instant(now)}';"
        )
        return {"now": format_instant(now)}

    def open(
        self,
        user_id: str,
        limit: int,
        anchor: datetime | None,
        zone: str | None,
        cap: int,
        now: datetime,
    ) -> None:
        assert anchor is None
        if zone is not None or cap:
            self._library().open(user_id, limit, anchor, zone, cap, now)
            return
        self.conn.execute(
            "INSERT INTO user_tokens (user_id, monthly_limit, last_monthly_reset, created_at,"
            f" updated_at) VALUES (:user, :limit, {MONTH_START}, :now, :now)",
            {"user": user_id, "limit": limit, **self.at(now)},
        )

    def deduct(
        self, user_id: str, amount: int, feature: str | None, key: str | None, now: datetime
    ) -> None:
        assert key is None
        if self.spent_through_the_library(user_id):
            self._library().deduct(user_id, amount, feature, key, now)
            return
        params = {"user": user_id, "amount": amount, "feature": feature, **self.at(now)}
        self.conn.execute("BEGIN IMMEDIATE")
        row = self.conn.execute(
            "SELECT monthly_tokens_used + :amount <= monthly_limit + overage_limit"
            " FROM user_tokens_with_auto_reset WHERE user_id = :user",
            params,
        ).fetchone()
        params["enough"] = row[0]
        # Spend if enough is left; either way a reset that is due is written, by the trigger.
        self.conn.execute(
            "UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used"
            f" + CASE WHEN :enough THEN :amount ELSE 0 END, updated_at = {STAMP}"
            f" WHERE user_id = :user AND (:enough OR last_monthly_reset < {MONTH_START})",
            params,
        )
        self.conn.execute(
            "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
            " balance_after, success, feature, effects)"
            " SELECT user_id, 'deduct', :amount, :now, max(monthly_limit - monthly_tokens_used, 0),"
            " :enough, :feature, CASE WHEN :enough THEN json_object('usage', :amount) ELSE '{}' END"
            " FROM user_tokens WHERE user_id = :user",
            params,
        )
        self.conn.execute("COMMIT")

    def set_limit(self, user_id: str, limit: int, overage: int, now: datetime) -> None:
        if self.left_to_the_library(user_id):
            self._library().set_limit(user_id, limit, overage, now)
            return
        params = {"user": user_id, "limit": limit, "overage": overage, **self.at(now)}
        self.conn.execute("BEGIN IMMEDIATE")
        params["previous_limit"], params["previous_overage"] = self.conn.execute(
            "SELECT monthly_limit, overage_limit FROM user_tokens WHERE user_id = :user", params
        ).fetchone()
        self.conn.execute(
            f"UPDATE user_tokens SET monthly_limit = :limit, overage_limit = :overage,"
            f" updated_at = {STAMP} WHERE user_id = :user AND (monthly_limit <> :limit"
            f" OR overage_limit <> :overage OR updated_at <> :now"
            f" OR last_monthly_reset < {MONTH_START})",
            params,
        )
        self.conn.execute(
            "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
            " balance_after, operation_context)"
            " SELECT user_id, 'limit_change', monthly_limit, :now,"
            " max(monthly_limit - monthly_tokens_used, 0),"
            " CASE WHEN :previous_overage = overage_limit"
            " THEN json_object('previous_limit', :previous_limit)"
            " ELSE json_object('previous_limit', :previous_limit,"
            " 'previous_overage_limit', :previous_overage, 'overage_limit', overage_limit) END"
            " FROM user_tokens WHERE user_id = :user",
            params,
        )
        self.conn.execute("COMMIT")

    def set_cap(self, user_id: str, cap: int, now: datetime) -> None:
        """A rollover cap is the library's to apply: its resets write a grant."""
        self._library().set_cap(user_id, cap, now)

    def reset_one(self, user_id: str, now: datetime) -> None:
        """Touching a row whose month has ended is enough: the trigger resets it."""
        if self.left_to_the_library(user_id):
            self._library().reset_one(user_id, now)
            return
        self.conn.execute(
            f"UPDATE user_tokens SET updated_at = {STAMP}"
            f" WHERE user_id = :user AND last_monthly_reset < {MONTH_START}",
            {"user": user_id, **self.at(now)},
        )

    def reset_all(self, now: datetime) -> None:
        """The stale calendar rows touched, the others reset by the library, in user order."""
        params = self.at(now)
        stale = self.conn.execute(
            f"SELECT user_id FROM user_tokens WHERE last_monthly_reset < {MONTH_START}"
            f" OR {LEFT_TO_THE_LIBRARY} ORDER BY user_id",
            params,
        ).fetchall()
        for (user_id,) in stale:
            self.reset_one(user_id, now)

    def touch(self, now: datetime) -> None:
        """Every row left to the library rewritten as it is, judged at ``now``: the triggers
        must leave them alone, stale or not."""
        self.conn.execute(
            "UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used"
            f" WHERE {LEFT_TO_THE_LIBRARY}",
            self.at(now),
        )

    def join(self, user_id: str, organisation_id: str | None, now: datetime) -> None:
        self._library().join(user_id, organisation_id, now)

    def cap_windows(self, user_id: str, caps: dict[str, int] | None, now: datetime) -> None:
        self._library().cap_windows(user_id, caps, now)
