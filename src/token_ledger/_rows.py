"""Rows of the ledger's tables to and from domain values, and the filters on them.

Both SQL adapters select and write these columns in this order; they differ
only in how an instant and a JSON document go to and come back from their
driver, and in how a parameter is marked, which they pass in. The filters of
:class:`~token_ledger.repository.AccountFilter` and
:class:`~token_ledger.repository.HistoryQuery` are written here once, as SQL
for the SQL adapters and as Python for the in-memory engine.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs

from token_ledger import windows
from token_ledger.account import TokenAccount
from token_ledger.grants import Grant, Reservation
from token_ledger.repository import AccountFilter, HistoryQuery, StaleCutoffs
from token_ledger.thresholds import Notification, Threshold, decode, encode
from token_ledger.transactions import Effects, Transaction

ACCOUNT_FIELDS = (
    "user_id",
    "monthly_limit",
    "monthly_tokens_used",
    "last_monthly_reset",
    "created_at",
    "updated_at",
    "reset_anchor",
    "overage_limit",
    "grant_balance",
    "reserved_tokens",
    "time_zone",
    "rollover_cap",
    "notification_thresholds",
    "organisation_id",
    "spending_windows",
)
ACCOUNT_COLUMNS = ", ".join(ACCOUNT_FIELDS)
TRANSACTION_COLUMNS = (
    "id, user_id, operation_type, amount, created_at, balance_after, success, feature,"
    " operation_context, idempotency_key, effects, reference, member_entry_id"
)
# An entry is written without its id, which the database assigns.
NEW_TRANSACTION_COLUMNS = TRANSACTION_COLUMNS.removeprefix("id, ")
GRANT_COLUMNS = (
    "id, user_id, amount, remaining, created_at, expires_at, reason, priority, voided_at"
)
RESERVATION_COLUMNS = "id, user_id, amount, created_at, expires_at, status, feature"
NOTIFICATION_COLUMNS = (
    "id, user_id, threshold, period_start, occurrence, created_at, transaction_id,"
    " monthly_used, monthly_limit, total_remaining"
)
# A notification is written without its id and occurrence, which the store assigns.
NEW_NOTIFICATION_COLUMNS = (
    "user_id, threshold, period_start, created_at, transaction_id, monthly_used,"
    " monthly_limit, total_remaining"
)

# The live grants and the held reservations of a list of users, oldest first.
# ``{token_grants}`` and ``{token_reservations}`` are the adapter's names of the
# tables, ``{among}`` its test that ``user_id`` is in the list.
LIVE_GRANTS = (
    f"SELECT {GRANT_COLUMNS} FROM {{token_grants}}"
    " WHERE remaining > 0 AND {among} ORDER BY created_at, id"
)
HELD_RESERVATIONS = (
    f"SELECT {RESERVATION_COLUMNS} FROM {{token_reservations}}"
    " WHERE status = 'held' AND {among} ORDER BY created_at, id"
)
BalanceSelect = Callable[[str, list[str]], Iterable[Sequence[Any]]]
"""Runs :data:`LIVE_GRANTS` or :data:`HELD_RESERVATIONS` for a list of user ids."""


@attrs.frozen
class RowReader:
    """Builds values from rows, with the driver's ways of returning instants and JSON."""

    instant: Callable[[Any], datetime]
    document: Callable[[Any], Any]

    def _optional_instant(self, value: Any) -> datetime | None:
        return None if value is None else self.instant(value)

    def account(self, row: Sequence[Any]) -> TokenAccount:
        return TokenAccount(
            user_id=row[0],
            monthly_limit=row[1],
            monthly_tokens_used=row[2],
            last_monthly_reset=self.instant(row[3]),
            created_at=self.instant(row[4]),
            updated_at=self.instant(row[5]),
            reset_anchor=self._optional_instant(row[6]),
            overage_limit=row[7],
            grant_balance=row[8],
            reserved_tokens=row[9],
            time_zone=row[10],
            rollover_cap=row[11],
            thresholds=decode(row[12]),
            organisation_id=row[13],
            windows=windows.decode(row[14]),
        )

    def notification(self, row: Sequence[Any]) -> Notification:
        return Notification(
            id=row[0],
            user_id=row[1],
            threshold=Threshold.parse(row[2]),
            period_start=self.instant(row[3]),
            occurrence=row[4],
            created_at=self.instant(row[5]),
            transaction_id=row[6],
            monthly_used=row[7],
            monthly_limit=row[8],
            total_remaining=row[9],
        )

    def transaction(self, row: Sequence[Any]) -> Transaction:
        return Transaction(
            id=row[0],
            user_id=row[1],
            operation_type=row[2],
            amount=row[3],
            created_at=self.instant(row[4]),
            balance_after=row[5],
            success=bool(row[6]),
            feature=row[7],
            operation_context=self.document(row[8]),
            idempotency_key=row[9],
            effects=Effects.from_dict(self.document(row[10])),
            reference=row[11],
            member_entry_id=row[12],
        )

    def grant(self, row: Sequence[Any]) -> Grant:
        return Grant(
            id=row[0],
            user_id=row[1],
            amount=row[2],
            remaining=row[3],
            created_at=self.instant(row[4]),
            expires_at=self._optional_instant(row[5]),
            reason=row[6],
            priority=row[7],
            voided_at=self._optional_instant(row[8]),
        )

    def reservation(self, row: Sequence[Any]) -> Reservation:
        return Reservation(
            id=row[0],
            user_id=row[1],
            amount=row[2],
            created_at=self.instant(row[3]),
            expires_at=self.instant(row[4]),
            status=row[5],
            feature=row[6],
        )

    def with_balances(
        self, accounts: list[TokenAccount], select: BalanceSelect
    ) -> list[TokenAccount]:
        """The accounts with their live grants and held reservations, by ``user_id``.

        Only the accounts whose row says they have some are looked up, one
        ``select`` per kind for the whole list, so an account with neither
        (the hot path) costs no query.
        """
        with_grants = [a.user_id for a in accounts if a.grant_balance > 0]
        with_holds = [a.user_id for a in accounts if a.reserved_tokens > 0]
        if not with_grants and not with_holds:
            return accounts
        grants: dict[str, list[Grant]] = {}
        for row in select(LIVE_GRANTS, with_grants) if with_grants else ():
            grants.setdefault(row[1], []).append(self.grant(row))
        holds: dict[str, list[Reservation]] = {}
        for row in select(HELD_RESERVATIONS, with_holds) if with_holds else ():
            holds.setdefault(row[1], []).append(self.reservation(row))
        return [
            attrs.evolve(
                account,
                grants=tuple(grants.get(account.user_id, ())),
                holds=tuple(holds.get(account.user_id, ())),
            )
            if account.grant_balance > 0 or account.reserved_tokens > 0
            else account
            for account in accounts
        ]


@attrs.frozen
class RowWriter:
    """Builds rows from values, with the driver's ways of taking instants, JSON and parameters.

    A row's values are in the order of its ``*_COLUMNS`` constant (an entry's
    in that of :data:`NEW_TRANSACTION_COLUMNS`), ready to be bound.
    """

    instant: Callable[[datetime], Any]
    document: Callable[[Any], Any]
    mark: str
    """The driver's parameter placeholder, which :data:`PARAM` becomes."""

    def _optional_instant(self, value: datetime | None) -> Any:
        return None if value is None else self.instant(value)

    def account_row(self, account: TokenAccount) -> tuple[Any, ...]:
        return (
            account.user_id,
            account.monthly_limit,
            account.monthly_tokens_used,
            self.instant(account.last_monthly_reset),
            self.instant(account.created_at),
            self.instant(account.updated_at),
            self._optional_instant(account.reset_anchor),
            account.overage_limit,
            account.grant_balance,
            account.reserved_tokens,
            account.time_zone,
            account.rollover_cap,
            encode(account.thresholds),
            account.organisation_id,
            windows.encode(account.windows),
        )

    def notification_row(self, note: Notification) -> tuple[Any, ...]:
        """In the order of :data:`NEW_NOTIFICATION_COLUMNS`."""
        return (
            note.user_id,
            note.threshold.key,
            self.instant(note.period_start),
            self.instant(note.created_at),
            note.transaction_id,
            note.monthly_used,
            note.monthly_limit,
            note.total_remaining,
        )

    def entry_row(self, entry: Transaction) -> tuple[Any, ...]:
        return (
            entry.user_id,
            entry.operation_type.value,
            entry.amount,
            self.instant(entry.created_at),
            entry.balance_after,
            entry.success,
            entry.feature,
            self.document(entry.operation_context),
            entry.idempotency_key,
            self.document(entry.effects.to_dict()),
            entry.reference,
            entry.member_entry_id,
        )

    def grant_row(self, grant: Grant) -> tuple[Any, ...]:
        return (
            grant.id,
            grant.user_id,
            grant.amount,
            grant.remaining,
            self.instant(grant.created_at),
            self._optional_instant(grant.expires_at),
            grant.reason,
            grant.priority,
            self._optional_instant(grant.voided_at),
        )

    def reservation_row(self, reservation: Reservation) -> tuple[Any, ...]:
        return (
            reservation.id,
            reservation.user_id,
            reservation.amount,
            self.instant(reservation.created_at),
            self.instant(reservation.expires_at),
            reservation.status.value,
            reservation.feature,
        )

    def parameter(self, value: Any) -> Any:
        """A condition's value as it is bound: instants as rows hold them, enums by value."""
        if isinstance(value, datetime):
            return self.instant(value)
        if isinstance(value, enum.Enum):
            return value.value
        return value

    def conditions(self, conditions: Sequence[Condition]) -> tuple[list[str], list[Any]]:
        """Each condition's SQL with this driver's marks, and all their values in order."""
        texts = [condition.sql.replace(PARAM, self.mark) for condition in conditions]
        values = [self.parameter(value) for condition in conditions for value in condition.values]
        return texts, values


def threshold_guard(thresholds: Sequence[Threshold], amount: str) -> str:
    """SQL that holds for a row of ``user_tokens`` where a one-statement deduction of
    ``amount`` (a parameter's mark) crosses no threshold in effect, so no notification is due.

    The statement's own guard keeps the deduction within the allowance of an account
    without grants or holds, in its current period: there usage ends at most at the limit,
    so only percents up to 100 can be crossed, and nothing left only by spending the whole
    allowance without overage. Percent ``p`` is reached at ``ceil(p * limit / 100)`` tokens
    used, computed as ``limit / 100 * p + (limit mod 100 * p + 99) / 100`` in whole numbers
    that never pass the limit (no overflow). An account with thresholds of its own (the
    column is neither ``NULL`` nor ``''``, none) is left to the full path.
    """
    crossings = []
    for threshold in thresholds:
        if threshold.percent is None:
            crossings.append(
                f"({amount} < monthly_limit - monthly_tokens_used OR overage_limit > 0)"
            )
        elif threshold.percent <= 100:
            p = int(threshold.percent)
            # the remainder written out: ``%`` is a placeholder's mark for psycopg
            rest = "(monthly_limit - monthly_limit / 100 * 100)"
            level = f"(monthly_limit / 100 * {p} + ({rest} * {p} + 99) / 100)"
            crossings.append(
                f"(monthly_tokens_used >= {level} OR {amount} < {level} - monthly_tokens_used)"
            )
    if not crossings:
        return "(notification_thresholds IS NULL OR notification_thresholds = '')"
    return (
        "(notification_thresholds = '' OR (notification_thresholds IS NULL AND "
        + " AND ".join(crossings)
        + "))"
    )


class KnownUsers:
    """User ids an adapter remembers something of, as a hint for its shortcuts: at most
    :attr:`LIMIT` of them; then it starts afresh."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._ids

    def add(self, user_id: str) -> None:
        if len(self._ids) >= self.LIMIT:
            self._ids = set()
        self._ids.add(user_id)

    def discard(self, user_id: str) -> None:
        self._ids.discard(user_id)


class KnownFullPath(KnownUsers):
    """User ids a one-statement deduction was seen not to cover: accounts off the ledger's
    calendar (a ``reset_anchor`` or a ``time_zone``) and accounts with windows, which take
    the full (locked) path, and members of an organisation that is such an account or a
    member itself.

    Each of those is set when an account opens or rarely changed, so an adapter that saw
    one need not try the statement for that user again. It is a hint only: the
    statement's guard decides, and a user wrongly remembered (its zone cleared since, or
    its organisation left its own) gets the full path, with the same rows.
    """


class KnownMembers(KnownUsers):
    """User ids seen to be members of an organisation, on an engine whose member's
    deduction is a statement of its own: the adapter sends them that one first, and a
    user seen not to be a member (any more) is forgotten. A hint only, as
    :class:`KnownFullPath` is: the statements' guards decide."""


LEDGER_CALENDAR = "(reset_anchor IS NULL AND time_zone IS NULL)"
"""The rows of :attr:`~token_ledger.account.TokenAccount.follows_the_ledger_calendar`: their
periods are the policy's calendar months, which a store can compare with by itself."""

PARAM = "{?}"
"""Where a condition's value goes in its SQL; each adapter puts its driver's mark there."""

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@attrs.frozen
class Condition:
    """A test of a row, written once: SQL for the SQL adapters, Python for the in-memory engine.

    ``sql`` has a :data:`PARAM` for each of ``values``, in order; ``test``
    gives the same answer for the value (an account, an entry) of the row.
    """

    sql: str
    values: tuple[Any, ...]
    test: Callable[[Any], bool]


def _compared(column: str, comparison: str, value: Any) -> Condition:
    """``column <comparison> value``, where the column holds the value's attribute of its name."""
    compare = _COMPARISONS[comparison]
    return Condition(
        f"{column} {comparison} {PARAM}",
        (value,),
        lambda row: compare(getattr(row, column), value),
    )


def _maybe_stale(cutoffs: StaleCutoffs, anchored: bool | None = None) -> Condition:
    """The accounts that can be stale: see :class:`~token_ledger.repository.StaleCutoffs`.

    With ``anchored`` known, only that half of the test is written.
    """

    def test(account: TokenAccount) -> bool:
        if account.follows_the_ledger_calendar:
            return account.last_monthly_reset < cutoffs.calendar
        return account.last_monthly_reset <= cutoffs.anchored

    if anchored is False:
        return Condition(f"last_monthly_reset < {PARAM}", (cutoffs.calendar,), test)
    if anchored:
        return Condition(f"last_monthly_reset <= {PARAM}", (cutoffs.anchored,), test)
    return Condition(
        f"(({LEDGER_CALENDAR} AND last_monthly_reset < {PARAM})"
        f" OR (NOT {LEDGER_CALENDAR} AND last_monthly_reset <= {PARAM}))",
        (cutoffs.calendar, cutoffs.anchored),
        test,
    )


def _current(cutoffs: StaleCutoffs, anchored: bool | None = None) -> Condition:
    """The accounts :func:`_maybe_stale` leaves out: none of them has a reset pending."""

    def test(account: TokenAccount) -> bool:
        if account.follows_the_ledger_calendar:
            return account.last_monthly_reset >= cutoffs.calendar
        return account.last_monthly_reset > cutoffs.anchored

    if anchored is False:
        return Condition(f"last_monthly_reset >= {PARAM}", (cutoffs.calendar,), test)
    if anchored:
        return Condition(f"last_monthly_reset > {PARAM}", (cutoffs.anchored,), test)
    return Condition(
        f"(({LEDGER_CALENDAR} AND last_monthly_reset >= {PARAM})"
        f" OR (NOT {LEDGER_CALENDAR} AND last_monthly_reset > {PARAM}))",
        (cutoffs.calendar, cutoffs.anchored),
        test,
    )


def _anchored(anchored: bool) -> Condition:
    return Condition(
        f"NOT {LEDGER_CALENDAR}" if anchored else LEDGER_CALENDAR,
        (),
        lambda account: account.follows_the_ledger_calendar != anchored,
    )


def _usage_above(ratio: float) -> Condition:
    """The seed's own high-usage formula, in float arithmetic on every engine.

    ``DOUBLE PRECISION`` is PostgreSQL's ``float8`` and a REAL in SQLite, as a
    Python ``float`` is; an exact quotient could count other accounts.
    """
    return Condition(
        f"CAST(monthly_tokens_used AS DOUBLE PRECISION) / monthly_limit > {PARAM}",
        (ratio,),
        lambda account: float(account.monthly_tokens_used) / account.monthly_limit > ratio,
    )


def account_conditions(where: AccountFilter, after_user_id: str | None) -> list[Condition]:
    """The tests of ``user_tokens`` rows that ``where`` and the page's start ask for."""
    conditions = []
    if after_user_id is not None:
        conditions.append(_compared("user_id", ">", after_user_id))
    if where.stale is not None:
        conditions.append(_maybe_stale(where.stale, where.anchored))
    if where.current is not None:
        conditions.append(_current(where.current, where.anchored))
    # After the period's test, which most rows fail or pass on one column: SQLite then
    # reads the calendar's two columns (time_zone the last but one) only for the rest.
    if where.anchored is not None:
        conditions.append(_anchored(where.anchored))
    if where.usage_above is not None:
        conditions.append(_usage_above(where.usage_above))
    return conditions


def history_conditions(query: HistoryQuery) -> list[Condition]:
    """The tests of ``token_transactions`` rows for the filters ``query`` gives."""
    return [
        _compared(column, comparison, value)
        for column, comparison, value in (
            ("user_id", "=", query.user_id),
            ("operation_type", "=", query.operation_type),
            ("feature", "=", query.feature),
            ("success", "=", query.success),
            ("created_at", ">=", query.since),
            ("created_at", "<", query.until),
            ("id", "<", query.before_id),
            ("reference", "=", query.reference),
        )
        if value is not None
    ]


def matches(conditions: Sequence[Condition], value: Any) -> bool:
    """Whether ``value`` (an account, an entry) passes every one of ``conditions``."""
    return all(condition.test(value) for condition in conditions)
