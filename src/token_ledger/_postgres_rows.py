"""Rows of the PostgreSQL engine to and from values: instants, JSON, conditions as
parameters, and the shapes the one-round-trip reads return.

:mod:`token_ledger._rows` holds what both SQL engines share; this is what psycopg
needs besides, for the sync and the asyncio engine alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import attrs
from psycopg import sql
from psycopg.types.json import Jsonb

from token_ledger._rows import NEW_NOTIFICATION_COLUMNS, PARAM, Condition, RowReader, RowWriter
from token_ledger.account import TokenAccount
from token_ledger.grants import Grant, Reservation
from token_ledger.thresholds import Notification


def _utc(value: datetime) -> datetime:
    """Whatever the session's ``TimeZone``, hand back UTC like every other adapter."""
    return value.astimezone(timezone.utc)


def _optional_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(timezone.utc)


def _as_given(value: datetime) -> datetime:
    return value


ROWS = RowReader(instant=_utc, document=dict)
WRITE = RowWriter(instant=_as_given, document=Jsonb, mark="%s")


def sql_conditions(conditions: Sequence[Condition]) -> tuple[list[sql.Composable], list[Any]]:
    """The conditions as SQL, with their ``%s`` values in order."""
    texts, params = WRITE.conditions(conditions)
    return [sql.SQL(text) for text in texts], params


def named_conditions(
    conditions: Sequence[Condition],
) -> tuple[list[sql.Composable], dict[str, Any]]:
    """The conditions as SQL with named parameters (``%(where_0)s``...), and their values."""
    texts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for condition in conditions:
        first, *rest = condition.sql.split(PARAM)
        text = first
        for part, value in zip(rest, condition.values, strict=True):
            name = f"where_{len(params)}"
            params[name] = WRITE.parameter(value)
            text += f"%({name})s{part}"
        texts.append(sql.SQL(text))
    return texts, params


def as_columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """The rows' values column by column: the arrays of an ``unnest`` statement."""
    return [list(column) for column in zip(*rows, strict=True)]


def read_one_account(rows: Sequence[Sequence[Any]]) -> TokenAccount | None:
    """The rows of :data:`ONE_ACCOUNT` as the account carrying its grants and holds."""
    if not rows:
        return None
    account = ROWS.account(rows[0][1:])
    user_id = account.user_id
    grants = tuple(
        Grant(
            row[1],
            user_id,
            row[2],
            row[3],
            _utc(row[4]),
            _optional_utc(row[5]),
            row[16],
            int(row[8]),
        )
        for row in rows
        if row[0] == 1
    )
    holds = tuple(
        Reservation(row[1], user_id, row[2], _utc(row[4]), _utc(row[5]), row[16], row[17])
        for row in rows
        if row[0] == 2
    )
    return attrs.evolve(account, grants=grants, holds=holds)


def read_with_balances(row: Sequence[Any]) -> TokenAccount:
    """A row of :data:`WITH_BALANCES` as an account carrying its grants and holds."""
    account = ROWS.account(row)
    if row[15] is None and row[22] is None:
        return account
    user_id = account.user_id
    grants = (
        ()
        if row[15] is None
        else tuple(
            Grant(
                id_,
                user_id,
                amount,
                remaining,
                _utc(created),
                _optional_utc(expires),
                reason,
                priority,
            )
            for id_, amount, remaining, created, expires, reason, priority in zip(
                *row[15:22], strict=True
            )
        )
    )
    holds = (
        ()
        if row[22] is None
        else tuple(
            Reservation(id_, user_id, amount, _utc(created), _utc(expires), status, feature)
            for id_, amount, created, expires, status, feature in zip(*row[22:28], strict=True)
        )
    )
    return attrs.evolve(account, grants=grants, holds=holds)


def notification_params(note: Notification) -> dict[str, Any]:
    """The parameters of :attr:`Statements.append_notification`."""
    return dict(
        zip(
            NEW_NOTIFICATION_COLUMNS.replace(" ", "").split(","),
            WRITE.notification_row(note),
            strict=True,
        )
    )
