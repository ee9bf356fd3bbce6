"""Every read of the ledger, written once, performing no I/O itself.

The same shape as :mod:`token_ledger.operations`, with the calls made of a
:class:`~token_ledger.repository.TokenRepository` (``get_account``,
``history``, ``scan_accounts``, ...) rather than of a unit of work: a read
takes no lock and writes nothing, so any runner (synchronous, asyncio, a
transaction the caller owns, whose uncommitted writes it then sees) answers
it alike. Long reads walk keyset pages, one page held at a time.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime
from typing import Any

from token_ledger import monitoring
from token_ledger.account import TokenAccount
from token_ledger.errors import AccountNotFound
from token_ledger.monitoring import AlertReport, AlertThresholds, Health
from token_ledger.operations import Call, Operation
from token_ledger.organisations import MAX_DEPTH
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.reconciliation import Discrepancy, discrepancies, effects_of
from token_ledger.repository import (
    MAX_HISTORY_LIMIT,
    AccountFilter,
    HistoryQuery,
    StaleCutoffs,
    UsageQuery,
)
from token_ledger.results import History, TokenStatus
from token_ledger.thresholds import Notification
from token_ledger.transactions import Effects, Transaction
from token_ledger.usage import UsageReport, UsageRow

SCAN_PAGE_SIZE = 1000

Accounts = Generator[Call, Any, list[TokenAccount]]


def account(user_id: str) -> Operation[TokenAccount]:
    found: TokenAccount | None = yield Call("get_account", (user_id,))
    if found is None:
        raise AccountNotFound(user_id)
    return found


def status(policy: MonthlyResetPolicy, now: datetime, user_id: str) -> Operation[TokenStatus]:
    found = yield from account(user_id)
    above: list[TokenAccount] = []
    organisation_id = found.organisation_id
    while organisation_id is not None and len(above) < MAX_DEPTH - 1:
        organisation: TokenAccount | None = yield Call("get_account", (organisation_id,))
        if organisation is None:
            break
        above.append(organisation)
        organisation_id = organisation.organisation_id
    return TokenStatus.of(found, policy, now, tuple(above))


def history(query: HistoryQuery) -> Operation[History]:
    return History((yield Call("history", (query,))))


def notifications(after: int, limit: int) -> Operation[list[Notification]]:
    found: list[Notification] = yield Call("notifications", (after, limit))
    return found


def notification_cursor(consumer: str) -> Operation[int]:
    position: int = yield Call("notification_cursor", (consumer,))
    return position


def usage(query: UsageQuery) -> Operation[UsageReport]:
    """Tokens spent net of refunds, per group: one grouped query of the store."""
    rows: list[UsageRow] = yield Call("usage", (query,))
    return UsageReport(rows, query.by)


def stale_cutoffs(policy: MonthlyResetPolicy, at: datetime) -> StaleCutoffs:
    """Bounds every account with a reset pending at ``at`` falls under (a store's pre-selection)."""
    return StaleCutoffs(calendar=policy.period(at).start, anchored=at - policy.shortest_period)


def health(policy: MonthlyResetPolicy, now: datetime) -> Operation[Health]:
    total: int = yield Call("count_accounts", ())
    stale = yield from _count_stale(policy, now)
    return monitoring.health(total, stale, now)


def alerts(
    policy: MonthlyResetPolicy, now: datetime, thresholds: AlertThresholds
) -> Operation[AlertReport]:
    overdue = yield from _count_stale(policy, thresholds.stale_at(now))
    refused = HistoryQuery(success=False, since=thresholds.failed_since(now))
    failed: int = yield Call("count_transactions", (refused,))
    high = 0
    above = AccountFilter(usage_above=float(thresholds.usage_ratio))
    after: str | None = None
    while True:
        page = yield from _scan_page(above, after)
        high += sum(1 for found in page if not found.is_stale(policy, now))
        if len(page) < SCAN_PAGE_SIZE:
            return monitoring.alerts(thresholds, overdue, failed, high, now)
        after = page[-1].user_id


def reconcile(user_id: str | None) -> Operation[list[Discrepancy]]:
    """Where stored balances differ from what the entries add up to, for one account or all."""
    if user_id is not None:
        found = yield from account(user_id)
        return (yield from _reconcile(found))
    discrepancies: list[Discrepancy] = []
    after: str | None = None
    while True:
        page = yield from _scan_page(AccountFilter(), after)
        for found in page:
            discrepancies += yield from _reconcile(found)
        if len(page) < SCAN_PAGE_SIZE:
            return discrepancies
        after = page[-1].user_id


# Shortcuts (token_ledger.commands.Shortcut): the same answers, counted by the database.
# ``count_accounts_where`` counts the accounts matching each of several filters in one
# pass. Without an anchor an account's staleness is a comparison the store makes
# exactly; only anchored accounts are read, a page at a time, for the domain to judge.


def health_counted(policy: MonthlyResetPolicy, now: datetime) -> Operation[Health]:
    """:func:`health`, with every account that has no anchor counted by the store."""
    cutoffs = stale_cutoffs(policy, now)
    total, calendar_stale, anchored_candidates = yield from _counts(
        AccountFilter(),
        AccountFilter(stale=cutoffs, anchored=False),
        AccountFilter(stale=cutoffs, anchored=True),
    )
    stale = calendar_stale
    if anchored_candidates:
        stale += yield from _count_anchored(
            AccountFilter(stale=cutoffs, anchored=True), policy, now
        )
    return monitoring.health(total, stale, now)


def alerts_counted(
    policy: MonthlyResetPolicy, now: datetime, thresholds: AlertThresholds
) -> Operation[AlertReport]:
    """:func:`alerts`, with every account that has no anchor counted by the store.

    High usage counts the accounts above the ratio with no reset pending: without
    an anchor, those in the current period; with one, as the domain judges them.
    """
    stale_at = thresholds.stale_at(now)
    overdue_cutoffs = stale_cutoffs(policy, stale_at)
    ratio = float(thresholds.usage_ratio)
    above = AccountFilter(usage_above=ratio, anchored=True)
    calendar_overdue, anchored_candidates, calendar_high, anchored_high = yield from _counts(
        AccountFilter(stale=overdue_cutoffs, anchored=False),
        AccountFilter(stale=overdue_cutoffs, anchored=True),
        AccountFilter(usage_above=ratio, current=stale_cutoffs(policy, now), anchored=False),
        above,
    )
    overdue = calendar_overdue
    if anchored_candidates:
        overdue += yield from _count_anchored(
            AccountFilter(stale=overdue_cutoffs, anchored=True), policy, stale_at
        )
    refused = HistoryQuery(success=False, since=thresholds.failed_since(now))
    failed: int = yield Call("count_transactions", (refused,))
    high = calendar_high
    if anchored_high:
        high += yield from _count_anchored(above, policy, now, stale=False)
    return monitoring.alerts(thresholds, overdue, failed, high, now)


def reconcile_counted(user_id: str | None) -> Operation[list[Discrepancy] | None]:
    """:func:`reconcile` as one grouped query of the store; ``None`` where it cannot answer."""
    if user_id is not None:
        yield from account(user_id)
    found: list[Discrepancy] | None = yield Call("find_discrepancies", (user_id,))
    return found


def _counts(*filters: AccountFilter) -> Generator[Call, Any, list[int]]:
    counts: list[int] = yield Call("count_accounts_where", (filters,))
    return counts


def _count_anchored(
    where: AccountFilter, policy: MonthlyResetPolicy, at: datetime, *, stale: bool = True
) -> Operation[int]:
    """How many accounts off the ledger's calendar (an anchor or a zone of their own)
    matching ``where`` had a reset pending at ``at``
    (or, with ``stale=False``, had none)."""
    count = 0
    after: str | None = None
    while True:
        page = yield from _scan_page(where, after)
        count += sum(
            1 for a in page if not a.follows_the_ledger_calendar and a.is_stale(policy, at) == stale
        )
        if len(page) < SCAN_PAGE_SIZE:
            return count
        after = page[-1].user_id


def _scan_page(where: AccountFilter, after: str | None) -> Accounts:
    page: list[TokenAccount] = yield Call("scan_accounts", (where, after, SCAN_PAGE_SIZE))
    return page


def _count_stale(policy: MonthlyResetPolicy, at: datetime) -> Operation[int]:
    """How many accounts had a reset pending at ``at``."""
    where = AccountFilter(stale=stale_cutoffs(policy, at))
    count = 0
    after: str | None = None
    while True:
        page = yield from _scan_page(where, after)
        count += sum(1 for found in page if found.is_stale(policy, at))
        if len(page) < SCAN_PAGE_SIZE:
            return count
        after = page[-1].user_id


def _reconcile(found: TokenAccount) -> Operation[list[Discrepancy]]:
    total = Effects()
    before: int | None = None
    while True:
        query = HistoryQuery(user_id=found.user_id, before_id=before, limit=MAX_HISTORY_LIMIT)
        page: list[Transaction] = yield Call("history", (query,))
        total += effects_of(page)
        if len(page) < MAX_HISTORY_LIMIT:
            return discrepancies(found, total)
        before = page[-1].id
