"""Usage reports: tokens spent net of refunds, by user, feature, day or month.

:class:`~token_ledger.repository.UsageQuery` is the question, :class:`UsageRow` one line of
the answer and :class:`UsageReport` all of it. The stores add the entries up themselves (one
grouped query each); what is written here once is what every engine shares: which entries
count (:func:`usage_conditions`), how rows are ordered (:func:`ordered`), the fold of entries
the in-memory engine uses, and the fold of UTC quarter-hours into local days and months that
lets SQLite, which has no time zones, group in SQL and still answer for any zone exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import attrs

from token_ledger import _html
from token_ledger._rows import Condition, history_conditions
from token_ledger.policy import load_zone
from token_ledger.repository import HistoryQuery, UsageQuery
from token_ledger.transactions import OperationType, Transaction

SPENDING = (OperationType.DEDUCT, OperationType.COMMIT)
COUNTED = (*SPENDING, OperationType.REFUND)
MEASURES = ("tokens", "spent", "refunded", "deductions", "refunds")
"""The figures of a row, after its group keys, in the order :meth:`UsageRow.to_dict` has them."""
KEY_COLUMNS = {"user": "user_id", "feature": "feature", "day": "day", "month": "month"}
"""The row attribute (and SQL column) of each group key."""
QUARTER_HOUR = timedelta(minutes=15)


@attrs.frozen
class UsageRow:
    """The tokens of one group: its keys (``None`` where the report is not grouped by one;
    a ``feature`` of ``None`` in a report by feature is the entries without one) and figures.

    ``day`` is a local date of the report's time zone; ``month`` the local date of the 1st.
    """

    user_id: str | None = None
    feature: str | None = None
    day: date | None = None
    month: date | None = None
    spent: int = 0
    """Tokens of successful deductions and commits."""
    refunded: int = 0
    """Tokens given back by refunds made in this group's time."""
    deductions: int = 0
    """How many successful deductions and commits."""
    refunds: int = 0
    """How many refunds."""

    @property
    def tokens(self) -> int:
        """Net tokens: ``spent - refunded`` (negative for a day of refunds only)."""
        return self.spent - self.refunded

    def to_dict(self, by: Sequence[str] = tuple(KEY_COLUMNS)) -> dict[str, Any]:
        """Plain JSON-ready values: the columns of the keys ``by`` (dates as ISO text), then
        :data:`MEASURES`."""
        keys: dict[str, Any] = {}
        for key in by:
            column = KEY_COLUMNS[key]
            value = getattr(self, column)
            keys[column] = value.isoformat() if isinstance(value, date) else value
        return {**keys, **{measure: getattr(self, measure) for measure in MEASURES}}


class UsageReport(list[UsageRow]):
    """What :meth:`TokenLedger.usage` returns: a plain list of rows that notebooks show as a
    table, ordered by day or month, then ``user_id``, then ``feature`` (see :func:`ordered`)."""

    def __init__(self, rows: Iterable[UsageRow] = (), by: Sequence[str] = ()) -> None:
        super().__init__(rows)
        self.by = tuple(by)
        """The group keys the report was asked for: its columns."""

    @property
    def columns(self) -> tuple[str, ...]:
        """The keys of :meth:`to_dicts`: the group columns, then :data:`MEASURES`."""
        return (*(KEY_COLUMNS[key] for key in self.by), *MEASURES)

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per row, keyed by :attr:`columns`: ``pandas.DataFrame(report.to_dicts())``."""
        return [row.to_dict(self.by) for row in self]

    @property
    def total(self) -> int:
        """Net tokens of the whole report."""
        return sum(row.tokens for row in self)

    def _repr_html_(self) -> str:
        if not self:
            return "<p>No usage.</p>"
        return _html.table(self.columns, [list(row.values()) for row in self.to_dicts()])


def ordered(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """Rows by day or month, then ``user_id``, then ``feature`` (by code point, as Python
    compares text, whatever the database's collation; entries without a feature first)."""
    return sorted(
        rows,
        key=lambda row: (
            row.day or row.month or date.min,
            row.user_id or "",
            row.feature is not None,
            row.feature or "",
        ),
    )


def usage_conditions(query: UsageQuery) -> list[Condition]:
    """The tests of ``token_transactions`` rows that a report adds up: successful spending
    and refund entries, within the query's filters."""
    counted = Condition(
        "success AND operation_type IN ('deduct', 'commit', 'refund')",
        (),
        lambda entry: entry.success and entry.operation_type in COUNTED,
    )
    filters = HistoryQuery(
        user_id=query.user_id, feature=query.feature, since=query.since, until=query.until
    )
    if query.organisation is not None:  # the rows are those of ORGANISATION_ENTRIES
        return [counted, *history_conditions(filters)]
    spent_here = Condition(
        "member_entry_id IS NULL", (), lambda entry: entry.member_entry_id is None
    )
    return [counted, spent_here, *history_conditions(filters)]


ORGANISATION_ENTRIES = (
    "(SELECT s.id, COALESCE(m.user_id, s.user_id) AS user_id, s.operation_type, s.amount,"
    " s.created_at, s.feature, s.success FROM {token_transactions} s"
    " LEFT JOIN {token_transactions} m ON m.id = s.member_entry_id"
    " WHERE s.user_id = {mark}) AS organisation_entries"
)
"""The entries of an organisation's budget, each share under the ``user_id`` of the member
whose entry it is a share of: what a report with ``organisation`` counts."""


def organisation_entries(entries: Sequence[Transaction], organisation: str) -> list[Transaction]:
    """:data:`ORGANISATION_ENTRIES` of ``entries``, for an engine that adds up in Python."""
    by_id = {entry.id: entry for entry in entries}
    return [
        attrs.evolve(entry, user_id=by_id[entry.member_entry_id].user_id)
        if entry.member_entry_id in by_id
        else entry
        for entry in entries
        if entry.user_id == organisation
    ]


Key = tuple[str | None, str | None, date | None]
"""A group: ``user_id``, ``feature``, and the local date its day or month starts on."""


class Totals:
    """Rows being added up, by group."""

    def __init__(self, query: UsageQuery) -> None:
        self.query = query
        self._by_group: dict[Key, list[int]] = {}

    def add(self, key: Key, spent: int, refunded: int, deductions: int, refunds: int) -> None:
        found = self._by_group.get(key)
        if found is None:
            self._by_group[key] = [spent, refunded, deductions, refunds]
        else:
            found[0] += spent
            found[1] += refunded
            found[2] += deductions
            found[3] += refunds

    def add_entry(self, entry: Transaction, local_date: date | None) -> None:
        user = entry.user_id if "user" in self.query.by else None
        feature = entry.feature if "feature" in self.query.by else None
        if entry.operation_type is OperationType.REFUND:
            self.add((user, feature, local_date), 0, entry.amount, 0, 1)
        else:
            self.add((user, feature, local_date), entry.amount, 0, 1, 0)

    def report(self) -> list[UsageRow]:
        bucket = self.query.bucket
        rows = [
            UsageRow(
                user_id=user,
                feature=feature,
                day=start if bucket == "day" else None,
                month=start if bucket == "month" else None,
                spent=spent,
                refunded=refunded,
                deductions=deductions,
                refunds=refunds,
            )
            for (user, feature, start), (spent, refunded, deductions, refunds) in (
                self._by_group.items()
            )
            if deductions or refunds
        ]
        return ordered(rows)


class LocalDates:
    """The local date (of a day, or of a month's 1st) that instants fall on, in one zone."""

    def __init__(self, query: UsageQuery) -> None:
        self._zone = load_zone(query.time_zone)
        self._month = query.bucket == "month"

    def of(self, instant: datetime) -> date:
        local = instant.astimezone(self._zone).date()
        return local.replace(day=1) if self._month else local


def fold_entries(query: UsageQuery, entries: Iterable[Transaction]) -> list[UsageRow]:
    """The report of ``entries``, added up here: every entry of them that the query counts."""
    conditions = usage_conditions(query)
    totals = Totals(query)
    dates = LocalDates(query) if query.bucket else None
    for entry in entries:
        if all(condition.test(entry) for condition in conditions):
            totals.add_entry(entry, None if dates is None else dates.of(entry.created_at))
    return totals.report()


class Straddles(Exception):
    """A quarter-hour holds two local dates: the zone's offset was not a multiple of 15
    minutes then (local mean time before 1900 or so), so the store adds up entries instead."""


def fold_quarter_hours(query: UsageQuery, rows: Iterable[Sequence[Any]]) -> list[UsageRow]:
    """The report from rows grouped by the query's keys and a UTC quarter-hour.

    Each row is the group columns of ``query.by`` other than ``day``/``month`` (in the order
    of :data:`~token_ledger.repository.USAGE_GROUPS`), the quarter-hour as
    ``YYYY-MM-DD HH:q`` (``q`` from 0 to 3; for months, the 2nd to 27th of a UTC month may
    come as ``YYYY-MM``), then spent, refunded, deductions, refunds.
    A quarter-hour falls on one local date in every zone whose offsets are multiples of 15
    minutes (every zone since the 1970s: +05:45, +12:45, half-hour DST); one that does not
    raises :class:`Straddles`.
    """
    dates = LocalDates(query)
    starts: dict[str, date] = {}
    totals = Totals(query)
    user_at = 0 if "user" in query.by else None
    feature_at = (1 if user_at is not None else 0) if "feature" in query.by else None
    at = (user_at is not None) + (feature_at is not None)
    for row in rows:
        text = row[at]
        local = starts.get(text)
        if local is None and len(text) == len("YYYY-MM"):  # a whole UTC month's middle
            local = starts[text] = date(int(text[0:4]), int(text[5:7]), 1)
        elif local is None:
            start = datetime(
                int(text[0:4]),
                int(text[5:7]),
                int(text[8:10]),
                int(text[11:13]),
                15 * int(text[14:]),
                tzinfo=timezone.utc,
            )
            local = dates.of(start)
            if dates.of(start + QUARTER_HOUR - timedelta(microseconds=1)) != local:
                raise Straddles(text)
            starts[text] = local
        totals.add(
            (
                None if user_at is None else row[user_at],
                None if feature_at is None else row[feature_at],
                local,
            ),
            *_figures(row[at + 1 :]),
        )
    return totals.report()


def rows_of(query: UsageQuery, rows: Iterable[Sequence[Any]]) -> list[UsageRow]:
    """The report from rows grouped by the store in full: the group columns of ``query.by``
    (a day or month as a ``date`` or ISO text), then spent, refunded, deductions, refunds."""
    totals = Totals(query)
    user = "user" in query.by
    feature = "feature" in query.by
    width = user + feature + (query.bucket is not None)
    for row in rows:
        at = 0
        user_id = row[at] if user else None
        at += user
        feature_name = row[at] if feature else None
        at += feature
        start = row[at] if query.bucket else None
        if isinstance(start, str):
            start = date.fromisoformat(start)
        totals.add((user_id, feature_name, start), *_figures(row[width:]))
    return totals.report()


def _figures(values: Sequence[Any]) -> tuple[int, int, int, int]:
    """Spent, refunded, deductions, refunds as ``int`` (a SQL sum of no rows is NULL, and
    PostgreSQL sums ``bigint`` as ``numeric``)."""
    spent, refunded, deductions, refunds = (int(value or 0) for value in values[:4])
    return spent, refunded, deductions, refunds
