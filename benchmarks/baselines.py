"""The benchmark's data, and the raw baselines: the same deduction by hand with the plain drivers.

Each baseline works on tables created by the library, with the library's
connection settings, and writes the same rows: one transaction per
deduction, a conditional relative ``UPDATE`` of ``user_tokens`` and an
``INSERT`` of the ``token_transactions`` entry with the same columns and
JSON context. It is what an application would write without token-ledger,
and so the yardstick for the library's overhead. Refusals are not
benchmarked (every account has far more tokens than a run spends), so an
``UPDATE`` that matches nothing is an error here.

:class:`RawPostgresBest` is the second PostgreSQL yardstick: the best a hand
writes, both statements as one data-modifying CTE in autocommit, one round trip.

:class:`RawSQLiteMember` and :class:`RawPostgresMember` are the yardsticks of a member
of an organisation: what a hand-written quota does when an account spends from its
organisation's budget as well as its own. In one transaction: the organisation's row
(the one its member's row names) updated first, guarded by its allowance, which
locks it; the member's row, guarded by its cap; the member's entry, and the
organisation's entry of the same deduction naming it (``member_entry_id``, and the
member in its context). A hand-written data-modifying CTE is no honest version of it:
the CTE runs every part, so one whose member guard failed would still have spent from
the organisation. (The library's member statement on PostgreSQL judges both rows, as
locked, before it writes either.)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from token_ledger import MonthlyResetPolicy, system_clock

if TYPE_CHECKING:
    import psycopg

FEATURE = "benchmark"
#: Far more than any run spends, so no deduction is ever refused.
LIMIT = 2**62


@dataclass(frozen=True)
class Deduction:
    """One call, made identically by the library and the baseline."""

    user_id: str
    amount: int
    context: dict[str, Any]
    idempotency_key: str


def plan(user_ids: Sequence[str], count: int, tag: str) -> list[Deduction]:
    """``count`` deductions over ``user_ids`` in turn, with keys unique to ``tag``.

    Built before the clock starts, so neither side pays for making its arguments.
    """
    return [
        Deduction(
            user_ids[number % len(user_ids)],
            1,
            {"request": number, "source": "benchmark"},
            f"{tag}-{number}",
        )
        for number in range(count)
    ]


def previous_period() -> datetime:
    """An instant in the calendar month before this one: when a benchmark account was last used."""
    return MonthlyResetPolicy().period(system_clock()).start - timedelta(days=1)


def _now() -> datetime:
    """The wall clock in UTC, read as the library's default clock reads it."""
    return datetime.now(timezone.utc)  # noqa: TID251


class RawSQLite:
    """A deduction in plain ``sqlite3``, with the pragmas the library's adapter sets.

    ``UPDATE ... RETURNING`` needs SQLite 3.35 or later.
    """

    UPDATE = (
        "UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used + ?, updated_at = ?"
        " WHERE user_id = ? AND monthly_tokens_used + ? <= monthly_limit"
        " RETURNING monthly_limit - monthly_tokens_used"
    )
    INSERT = (
        "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
        " balance_after, success, feature, operation_context, idempotency_key)"
        " VALUES (?, 'deduct', ?, ?, ?, 1, ?, ?, ?)"
    )

    def __init__(self, path: Path | str) -> None:
        self.conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")

    def deduct(self, deduction: Deduction) -> int:
        """Spend ``deduction.amount`` in one ``BEGIN IMMEDIATE`` transaction; the balance after."""
        now = _now().isoformat(sep=" ", timespec="microseconds")
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                self.UPDATE, (deduction.amount, now, deduction.user_id, deduction.amount)
            ).fetchone()
            if row is None:
                raise RuntimeError(f"no tokens left for {deduction.user_id!r}")
            conn.execute(
                self.INSERT,
                (
                    deduction.user_id,
                    deduction.amount,
                    now,
                    row[0],
                    FEATURE,
                    json.dumps(deduction.context, separators=(",", ":")),
                    deduction.idempotency_key,
                ),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        balance: int = row[0]
        return balance

    def close(self) -> None:
        self.conn.close()


class RawSQLiteMember(RawSQLite):
    """A member's deduction in plain ``sqlite3``: the organisation's row, then the member's,
    then both entries, in one ``BEGIN IMMEDIATE`` transaction."""

    UPDATE_ORGANISATION = (
        "UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used + ?, updated_at = ?"
        " WHERE user_id = (SELECT organisation_id FROM user_tokens WHERE user_id = ?)"
        " AND monthly_tokens_used + ? <= monthly_limit"
        " RETURNING user_id, monthly_limit - monthly_tokens_used"
    )
    INSERT_MEMBER = RawSQLite.INSERT + " RETURNING id"
    INSERT_SHARE = (
        "INSERT INTO token_transactions (user_id, operation_type, amount, created_at,"
        " balance_after, success, feature, operation_context, member_entry_id)"
        " VALUES (?, 'deduct', ?, ?, ?, 1, ?, ?, ?)"
    )

    def deduct(self, deduction: Deduction) -> int:
        """Spend ``deduction.amount`` from the member and its organisation; the member's
        balance after."""
        now = _now().isoformat(sep=" ", timespec="microseconds")
        conn = self.conn
        user_id, amount = deduction.user_id, deduction.amount
        conn.execute("BEGIN IMMEDIATE")
        try:
            organisation = conn.execute(
                self.UPDATE_ORGANISATION, (amount, now, user_id, amount)
            ).fetchone()
            if organisation is None:
                raise RuntimeError(f"no tokens left for the organisation of {user_id!r}")
            member = conn.execute(self.UPDATE, (amount, now, user_id, amount)).fetchone()
            if member is None:
                raise RuntimeError(f"no tokens left for {user_id!r}")
            entry = conn.execute(
                self.INSERT_MEMBER,
                (
                    user_id,
                    amount,
                    now,
                    member[0],
                    FEATURE,
                    json.dumps(deduction.context, separators=(",", ":")),
                    deduction.idempotency_key,
                ),
            ).fetchone()
            conn.execute(
                self.INSERT_SHARE,
                (
                    organisation[0],
                    amount,
                    now,
                    organisation[1],
                    FEATURE,
                    json.dumps({"member": user_id}, separators=(",", ":")),
                    entry[0],
                ),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        balance: int = member[0]
        return balance


class RawPostgres:
    """A deduction in plain ``psycopg``: one transaction, committed, on one connection."""

    def __init__(self, url: str, schema: str) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        self.jsonb = Jsonb
        self.conn: psycopg.Connection[Any] = psycopg.connect(url)
        identifier = sql.Identifier(schema)
        self.update = (
            sql.SQL(
                "UPDATE {}.user_tokens SET monthly_tokens_used = monthly_tokens_used + %s,"
                " updated_at = %s WHERE user_id = %s AND monthly_tokens_used + %s <= monthly_limit"
                " RETURNING monthly_limit - monthly_tokens_used"
            )
            .format(identifier)
            .as_string(self.conn)
        )
        self.insert = (
            sql.SQL(
                "INSERT INTO {}.token_transactions (user_id, operation_type, amount, created_at,"
                " balance_after, success, feature, operation_context, idempotency_key)"
                " VALUES (%s, 'deduct', %s, %s, %s, true, %s, %s, %s)"
            )
            .format(identifier)
            .as_string(self.conn)
        )

    def deduct(self, deduction: Deduction) -> int:
        """Spend ``deduction.amount`` in one committed transaction; the balance after."""
        now = _now()
        with self.conn.transaction():
            row = self.conn.execute(
                self.update, (deduction.amount, now, deduction.user_id, deduction.amount)
            ).fetchone()
            if row is None:
                raise RuntimeError(f"no tokens left for {deduction.user_id!r}")
            self.conn.execute(
                self.insert,
                (
                    deduction.user_id,
                    deduction.amount,
                    now,
                    row[0],
                    FEATURE,
                    self.jsonb(deduction.context),
                    deduction.idempotency_key,
                ),
            )
        balance: int = row[0]
        return balance

    def close(self) -> None:
        self.conn.close()


class RawPostgresMember:
    """A member's deduction in plain ``psycopg``: the organisation's row (locked by its
    guarded ``UPDATE``), then the member's, then both entries, in one transaction."""

    def __init__(self, url: str, schema: str) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        self.jsonb = Jsonb
        self.conn: psycopg.Connection[Any] = psycopg.connect(url)
        identifier = sql.Identifier(schema)

        def statement(text: str) -> str:
            return sql.SQL(text).format(schema=identifier).as_string(self.conn)

        self.update_organisation = statement(
            "UPDATE {schema}.user_tokens SET monthly_tokens_used = monthly_tokens_used + %s,"
            " updated_at = %s WHERE user_id = (SELECT organisation_id FROM {schema}.user_tokens"
            " WHERE user_id = %s) AND monthly_tokens_used + %s <= monthly_limit"
            " RETURNING user_id, monthly_limit - monthly_tokens_used"
        )
        self.update_member = statement(
            "UPDATE {schema}.user_tokens SET monthly_tokens_used = monthly_tokens_used + %s,"
            " updated_at = %s WHERE user_id = %s AND monthly_tokens_used + %s <= monthly_limit"
            " RETURNING monthly_limit - monthly_tokens_used"
        )
        self.insert_member = statement(
            "INSERT INTO {schema}.token_transactions (user_id, operation_type, amount,"
            " created_at, balance_after, success, feature, operation_context, idempotency_key)"
            " VALUES (%s, 'deduct', %s, %s, %s, true, %s, %s, %s) RETURNING id"
        )
        self.insert_share = statement(
            "INSERT INTO {schema}.token_transactions (user_id, operation_type, amount,"
            " created_at, balance_after, success, feature, operation_context, member_entry_id)"
            " VALUES (%s, 'deduct', %s, %s, %s, true, %s, %s, %s)"
        )

    def deduct(self, deduction: Deduction) -> int:
        """Spend ``deduction.amount`` from the member and its organisation in one committed
        transaction; the member's balance after."""
        now = _now()
        user_id, amount = deduction.user_id, deduction.amount
        with self.conn.transaction():
            organisation = self.conn.execute(
                self.update_organisation, (amount, now, user_id, amount)
            ).fetchone()
            if organisation is None:
                raise RuntimeError(f"no tokens left for the organisation of {user_id!r}")
            member = self.conn.execute(
                self.update_member, (amount, now, user_id, amount)
            ).fetchone()
            if member is None:
                raise RuntimeError(f"no tokens left for {user_id!r}")
            entry = self.conn.execute(
                self.insert_member,
                (
                    user_id,
                    amount,
                    now,
                    member[0],
                    FEATURE,
                    self.jsonb(deduction.context),
                    deduction.idempotency_key,
                ),
            ).fetchone()
            assert entry is not None
            self.conn.execute(
                self.insert_share,
                (
                    organisation[0],
                    amount,
                    now,
                    organisation[1],
                    FEATURE,
                    self.jsonb({"member": user_id}),
                    entry[0],
                ),
            )
        balance: int = member[0]
        return balance

    def close(self) -> None:
        self.conn.close()


class RawPostgresBest:
    """A deduction as one data-modifying CTE on an autocommit connection: one round trip."""

    def __init__(self, url: str, schema: str) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        self.jsonb = Jsonb
        self.conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        identifier = sql.Identifier(schema)
        self.statement = (
            sql.SQL(
                "WITH updated AS (UPDATE {schema}.user_tokens"
                " SET monthly_tokens_used = monthly_tokens_used + %(amount)s,"
                " updated_at = %(now)s WHERE user_id = %(user_id)s"
                " AND monthly_tokens_used + %(amount)s <= monthly_limit"
                " RETURNING monthly_limit - monthly_tokens_used AS balance)"
                " INSERT INTO {schema}.token_transactions (user_id, operation_type, amount,"
                " created_at, balance_after, success, feature, operation_context,"
                " idempotency_key)"
                " SELECT %(user_id)s, 'deduct', %(amount)s, %(now)s, balance, true,"
                " %(feature)s, %(context)s, %(key)s FROM updated RETURNING balance_after"
            )
            .format(schema=identifier)
            .as_string(self.conn)
        )

    def deduct(self, deduction: Deduction) -> int:
        """Spend ``deduction.amount`` in one statement; the balance after."""
        row = self.conn.execute(
            self.statement,
            {
                "amount": deduction.amount,
                "now": _now(),
                "user_id": deduction.user_id,
                "feature": FEATURE,
                "context": self.jsonb(deduction.context),
                "key": deduction.idempotency_key,
            },
        ).fetchone()
        if row is None:
            raise RuntimeError(f"no tokens left for {deduction.user_id!r}")
        balance: int = row[0]
        return balance

    def close(self) -> None:
        self.conn.close()
