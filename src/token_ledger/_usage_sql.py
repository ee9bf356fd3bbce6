"""The grouped query of a usage report, for SQLite and for PostgreSQL.

Each statement is ``SELECT <group columns>, <figures> FROM token_transactions WHERE <the
entries a report counts> GROUP BY <the group columns>``: one pass, and the database adds up.
``{token_transactions}`` is where the adapter puts its name of the table; the conditions
(:func:`token_ledger.usage.usage_conditions`) carry the driver's parameter marks.

PostgreSQL knows time zones, so it groups by the local day or month itself. SQLite does not:
it groups by the UTC quarter-hour (:data:`QUARTER_HOUR`) and the library folds those rows
into local days or months (:func:`token_ledger.usage.fold_quarter_hours`), exact for every
zone whose offsets are multiples of 15 minutes. A report in UTC is grouped by day or month
in SQL outright.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from token_ledger._rows import RowWriter
from token_ledger.repository import UsageQuery
from token_ledger.transactions import Transaction
from token_ledger.usage import (
    KEY_COLUMNS,
    ORGANISATION_ENTRIES,
    Straddles,
    UsageRow,
    fold_entries,
    fold_quarter_hours,
    rows_of,
    usage_conditions,
)

FIGURES = (
    "sum(CASE WHEN operation_type = 'refund' THEN 0 ELSE amount END),"
    " sum(CASE WHEN operation_type = 'refund' THEN amount ELSE 0 END),"
    " sum(CASE WHEN operation_type = 'refund' THEN 0 ELSE 1 END),"
    " sum(CASE WHEN operation_type = 'refund' THEN 1 ELSE 0 END)"
)
"""Spent, refunded, deductions and refunds of a group."""

# Instants are stored as 'YYYY-MM-DD HH:MM:SS.ffffff+00:00' in UTC (token_ledger.sqlite).
QUARTER_HOUR = "substr(created_at, 1, 14) || (CAST(substr(created_at, 15, 2) AS INTEGER) / 15)"
"""The UTC quarter-hour of an instant as SQLite stores it: ``YYYY-MM-DD HH:q``, q in 0..3."""
MONTH_OR_QUARTER_HOUR = (
    "CASE WHEN substr(created_at, 9, 2) BETWEEN '02' AND '27' THEN substr(created_at, 1, 7)"
    f" ELSE {QUARTER_HOUR} END"
)
"""For months: an instant of the 2nd to the 27th of a UTC month is in that month in every
zone (offsets are less than a day), so only the days around a month's end are split into
quarter-hours, ``YYYY-MM`` the rest."""
UTC_BUCKETS = {"day": "substr(created_at, 1, 10)", "month": "substr(created_at, 1, 7) || '-01'"}
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT"})
"""Zone names whose offset is 0 at every instant: SQLite groups their days by the stored text."""

POSTGRES_BUCKETS = {
    "day": "(created_at AT TIME ZONE {zone})::date",
    "month": "date_trunc('month', created_at AT TIME ZONE {zone})::date",
}


def _grouped(
    columns: list[str], query: UsageQuery, writer: RowWriter, params: list[Any]
) -> tuple[str, list[Any]]:
    source, source_params = _source(query, writer)
    texts, values = writer.conditions(usage_conditions(query))
    selected = ", ".join([*columns, FIGURES])
    group = f" GROUP BY {', '.join(str(n) for n in range(1, len(columns) + 1))}" if columns else ""
    statement = f"SELECT {selected} FROM {source} WHERE {' AND '.join(texts)}{group}"
    return statement, [*params, *source_params, *values]


def _source(query: UsageQuery, writer: RowWriter) -> tuple[str, list[Any]]:
    """The table a report reads: the entries, or an organisation's
    (:data:`~token_ledger.usage.ORGANISATION_ENTRIES`)."""
    if query.organisation is None:
        return "{token_transactions}", []
    return ORGANISATION_ENTRIES.replace("{mark}", writer.mark), [query.organisation]


def _keys(query: UsageQuery) -> list[str]:
    return [KEY_COLUMNS[key] for key in ("user", "feature") if key in query.by]


def sqlite_folds(query: UsageQuery) -> bool:
    """Whether SQLite's rows are quarter-hours, for :func:`~token_ledger.usage.fold_quarter_hours`
    (rather than the report's own groups)."""
    return query.bucket is not None and query.time_zone not in UTC_ZONES


def sqlite_statement(query: UsageQuery, writer: RowWriter) -> tuple[str, list[Any]]:
    """The grouped query for SQLite: by quarter-hour when :func:`sqlite_folds`."""
    columns = _keys(query)
    if query.bucket is not None:
        if not sqlite_folds(query):
            columns.append(UTC_BUCKETS[query.bucket])
        else:
            columns.append(QUARTER_HOUR if query.bucket == "day" else MONTH_OR_QUARTER_HOUR)
    return _grouped(columns, query, writer, [])


def postgres_statement(query: UsageQuery, writer: RowWriter) -> tuple[str, list[Any]]:
    """The grouped query for PostgreSQL, by the local day or month of ``query.time_zone``."""
    columns = _keys(query)
    params: list[Any] = []
    if query.bucket is not None:
        columns.append(POSTGRES_BUCKETS[query.bucket].format(zone=writer.mark))
        params.append(query.time_zone)
    return _grouped(columns, query, writer, params)


def sqlite_usage(conn: sqlite3.Connection, query: UsageQuery, writer: RowWriter) -> list[UsageRow]:
    """The report from SQLite's grouped query, its quarter-hours folded into local dates.

    Two cases SQL cannot answer exactly are added up here from the entries instead: a sum
    past 2^63 - 1 (SQLite's integers overflow where Python's do not) and a quarter-hour that
    falls on two local dates (:class:`~token_ledger.usage.Straddles`).
    """
    statement, params = sqlite_statement(query, writer)
    try:
        rows = conn.execute(statement.format(token_transactions="token_transactions"), params)
        if sqlite_folds(query):
            return fold_quarter_hours(query, rows)
        return rows_of(query, rows)
    except Straddles:
        pass
    except sqlite3.OperationalError as error:
        if "overflow" not in str(error):
            raise
    return fold_entries(query, _entries(conn, query, writer))


def _entries(conn: sqlite3.Connection, query: UsageQuery, writer: RowWriter) -> list[Transaction]:
    """The entries the report counts, with the columns it reads."""
    source, source_params = _source(query, writer)
    texts, values = writer.conditions(usage_conditions(query))
    rows = conn.execute(
        f"SELECT user_id, operation_type, amount, created_at, feature FROM {source}"
        f" WHERE {' AND '.join(texts)}".format(token_transactions="token_transactions"),
        [*source_params, *values],
    )
    return [
        Transaction(user, kind, amount, datetime.fromisoformat(at), 0, feature=feature)
        for user, kind, amount, at, feature in rows
    ]
