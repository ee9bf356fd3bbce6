"""Members of one organisation spending at once, from many processes, on any engine.

The accounts: the organisation ``org`` and twelve members, whose caps add up to three
times its allowance, and a second organisation ``other`` that members move to and back
from (and, now and then, to no organisation at all). Each worker runs a fixed number of
operations on randomly chosen members: deductions, holds committed in part or released,
refunds of its own earlier spending, and moves. Refusals (:class:`InsufficientTokens`,
:class:`ReservationsHeld`) are outcomes; any other error is a surprise, which the test
reports with its traceback. Afterwards :func:`assert_no_budget_overspent` and its
fellows check every budget against the log and against what the workers were told.

It lives in its own module so that a freshly spawned interpreter can import it.
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from token_ledger import (
    InsufficientTokens,
    OperationType,
    ReservationsHeld,
    TokenLedger,
    Transaction,
)

ORGANISATION = "org"
OTHER = "other"
MEMBERS = tuple(f"member-{n:02d}" for n in range(12))
DESTINATIONS: tuple[str | None, ...] = (ORGANISATION, ORGANISATION, OTHER, OTHER, None)
"""Where a move takes a member: back to ``org`` as often as away from it."""
ASKED_PER_OPERATION = 10
"""About what one operation of :func:`churn` asks to deduct or hold, on average."""

SPENDING = frozenset({OperationType.DEDUCT, OperationType.COMMIT})


class Budgets(NamedTuple):
    """The monthly limits: the organisations', and each member's own cap."""

    organisation: int
    other: int
    members: dict[str, int]

    def of(self, user_id: str) -> int:
        if user_id == ORGANISATION:
            return self.organisation
        if user_id == OTHER:
            return self.other
        return self.members[user_id]


def budgets_for(operations: int) -> Budgets:
    """Limits for ``operations`` operations in all. Members spend from ``org`` a little
    under half the time and from ``other`` a third of it; what their own caps let through
    to each (deductions, and holds whole) is three to four times its allowance, though
    releases, commits of less than was held and refunds give some back. The members' caps
    differ twelvefold and add up to three times ``org``'s allowance, so the small ones run
    out of their own budget long before ``org`` does."""
    demand = operations * ASKED_PER_OPERATION
    organisation = demand * 45 // 100 // 4
    weights = range(1, len(MEMBERS) + 1)
    caps = {m: 3 * organisation * w // sum(weights) for m, w in zip(MEMBERS, weights, strict=True)}
    return Budgets(organisation, demand * 30 // 100 // 4, caps)


def open_organisation(ledger: TokenLedger, budgets: Budgets) -> None:
    ledger.open_account(ORGANISATION, monthly_limit=budgets.organisation)
    ledger.open_account(OTHER, monthly_limit=budgets.other)
    for member, cap in budgets.members.items():
        ledger.open_account(member, monthly_limit=cap, organisation_id=ORGANISATION)


class Outcome(NamedTuple):
    """What one worker was told.

    ``spent``: (entry id, member, amount) of each successful deduction and commit;
    ``refunded``: (refund entry id, member, refunded entry id, amount);
    ``counts``: how often each outcome happened; ``surprises``: tracebacks.
    """

    spent: list[tuple[int, str, int]]
    refunded: list[tuple[int, str, int, int]]
    counts: dict[str, int]
    surprises: list[str]


def churn(ledger: TokenLedger, operations: int, seed: int, start: float = 0.0) -> Outcome:
    """Run ``operations`` random operations on random members, from ``start`` (an instant of
    ``time.time()``, so that every worker begins together)."""
    rng = random.Random(seed)
    spent: list[tuple[int, str, int]] = []
    refunded: list[tuple[int, str, int, int]] = []
    counts: Counter[str] = Counter()
    surprises: list[str] = []
    left: dict[int, tuple[str, int]] = {}  # refundable entry id -> (member, what is left)

    def spending(entry: Transaction, member: str, kind: str) -> None:
        assert entry.id is not None
        assert entry.success
        counts[kind] += 1
        spent.append((entry.id, member, entry.amount))
        if entry.amount:
            left[entry.id] = (member, entry.amount)

    time.sleep(max(0.0, start - time.time()))
    for _ in range(operations):
        member = rng.choice(MEMBERS)
        choice = rng.random()
        try:
            if choice < 0.15 and left:
                entry_id = rng.choice(sorted(left))
                owner, remaining = left.pop(entry_id)
                amount = None if rng.random() < 0.3 else rng.randint(1, remaining)
                refund = ledger.refund(entry_id, amount, reason="churn")
                assert refund.id is not None
                assert refund.amount == (amount or remaining), (refund, remaining)
                refunded.append((refund.id, owner, entry_id, refund.amount))
                counts["refund" if refund.amount == remaining else "partial refund"] += 1
                if refund.amount < remaining:
                    left[entry_id] = (owner, remaining - refund.amount)
            elif choice < 0.35:
                destination = rng.choice(DESTINATIONS)
                try:
                    ledger.move_to_organisation(member, destination)
                    counts["move"] += 1
                except ReservationsHeld:
                    counts["move refused: a hold of another worker"] += 1
            elif choice < 0.65:
                hold = ledger.reserve(member, rng.randint(2, 30), feature="churn")
                counts["reserve"] += 1
                if rng.random() < 0.15:
                    # Nobody can move the member while this hold is held: it stays where
                    # it is (a "move" to there would be no move at all).
                    here = ledger.get_account(member).organisation_id
                    elsewhere = [d for d in DESTINATIONS if d != here]
                    try:
                        ledger.move_to_organisation(member, rng.choice(elsewhere))
                    except ReservationsHeld:
                        counts["move refused: its own hold"] += 1
                    else:
                        surprises.append(f"{member} moved from {here} holding {hold.id}")
                if rng.random() < 0.3:
                    ledger.release(hold.id)
                    counts["release"] += 1
                else:
                    committed = ledger.commit(hold.id, rng.randint(0, hold.amount))
                    spending(committed.transaction, member, "commit")
            else:
                deducted = ledger.deduct(member, rng.randint(1, 30), feature="churn")
                spending(deducted.transaction, member, "deduct")
        except InsufficientTokens as refusal:
            counts["refused: insufficient tokens"] += 1
            counts[f"refused by {refusal.refused_by or 'own'}"] += 1
        except Exception:
            surprises.append(traceback.format_exc())
    return Outcome(spent, refunded, dict(counts), surprises)


# checks of the ledger afterwards


def every_entry(ledger: TokenLedger, user_id: str) -> list[Transaction]:
    """All of the account's entries, oldest first, read page by page."""
    entries: list[Transaction] = []
    before: int | None = None
    while True:
        page = ledger.history(user_id, before_id=before, limit=1000)
        entries += page
        if len(page) < 1000:
            return entries[::-1]
        before = page[-1].id


def logs(ledger: TokenLedger) -> dict[str, list[Transaction]]:
    return {u: every_entry(ledger, u) for u in (ORGANISATION, OTHER, *MEMBERS)}


def assert_no_budget_overspent(
    ledger: TokenLedger, budgets: Budgets, log: dict[str, list[Transaction]]
) -> None:
    """Replayed in id order (the order the writers held each account's lock), what every
    account had spent and held never went past its limit; it ends with nothing held, and
    as its log says."""
    for user_id, entries in log.items():
        account = ledger.get_account(user_id)
        ceiling = account.monthly_limit + account.overage_limit
        assert account.monthly_limit == budgets.of(user_id)
        used = held = 0
        for entry in entries:
            if entry.success:
                used += entry.effects.usage
                held += entry.effects.reserved
            assert min(used, held) >= 0, (user_id, used, held, entry)
            assert used + held <= ceiling, f"{user_id} overspent: {used} + {held} held > {ceiling}"
        stored = (account.monthly_tokens_used, account.reserved_tokens, account.holds)
        assert stored == (used, 0, ()), (user_id, stored, used)
        assert account.monthly_tokens_used <= ceiling, account


def assert_each_budget_adds_up(
    ledger: TokenLedger, log: dict[str, list[Transaction]], outcomes: Sequence[Outcome]
) -> None:
    """An organisation used what its members' shares spent, less the refunds of them; a
    member used what its workers were told it spent, less what they were told came back."""
    for organisation in (ORGANISATION, OTHER):
        paid = 0
        for entry in log[organisation]:
            assert entry.member_entry_id is not None or entry.operation_type is (
                OperationType.LIMIT_CHANGE
            ), f"{organisation} spent on its own: {entry}"
            if entry.success and entry.operation_type in SPENDING:
                paid += entry.amount
            elif entry.success and entry.operation_type is OperationType.REFUND:
                paid -= entry.amount
        assert ledger.get_account(organisation).monthly_tokens_used == paid
    told: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        for _entry_id, member, amount in outcome.spent:
            told[member] += amount
        for _refund_id, member, _spent_id, amount in outcome.refunded:
            told[member] -= amount
    for member in MEMBERS:
        logged = sum(
            (e.amount if e.operation_type in SPENDING else -e.amount)
            for e in log[member]
            if e.success and e.operation_type in SPENDING | {OperationType.REFUND}
        )
        assert ledger.get_account(member).monthly_tokens_used == told[member] == logged
    acknowledged = {i for o in outcomes for i, _, _ in o.spent} | {
        i for o in outcomes for i, _, _, _ in o.refunded
    }
    logged_ids = {
        e.id
        for m in MEMBERS
        for e in log[m]
        if e.success and e.operation_type in SPENDING | {OperationType.REFUND}
    }
    assert acknowledged == logged_ids


def assert_shares_match_their_members(log: dict[str, list[Transaction]]) -> None:
    """Every share points to the member's entry of the same operation and amount (a
    refund's, to the organisation's share of what the member's refund refunds); every
    member's entry has the shares it should: one on the organisation it was in at the time
    (as its moves say) for what it reserved, committed, released or deducted, and for a
    refund one on each organisation that paid for what it refunds; a refusal has none."""
    entries = {e.id: e for entries in log.values() for e in entries}
    shares: dict[int, list[Transaction]] = defaultdict(list)
    for payer in (ORGANISATION, OTHER):
        for share in log[payer]:
            if share.member_entry_id is None:
                continue
            member_entry = entries[share.member_entry_id]
            assert member_entry.user_id in MEMBERS
            assert share.operation_context.get("member") == member_entry.user_id
            assert (share.operation_type, share.amount, share.success) == (
                member_entry.operation_type,
                member_entry.amount,
                member_entry.success,
            ), (share, member_entry)
            assert share.success, share
            if share.operation_type is OperationType.REFUND:
                # the organisation's refund gives back its own share of the refunded entry
                assert share.reference is not None
                refunded = entries[int(share.reference)]
                assert (refunded.user_id, refunded.member_entry_id) == (
                    payer,
                    int(member_entry.reference or 0),
                ), (share, refunded, member_entry)
            shares[share.member_entry_id].append(share)
    for member in MEMBERS:
        organisation: str | None = ORGANISATION
        for entry in log[member]:
            assert entry.id is not None
            payers = sorted(s.user_id for s in shares[entry.id])
            expected: list[str]
            if entry.operation_type is OperationType.LIMIT_CHANGE:
                assert entry.operation_context["previous_organisation"] == organisation
                organisation = entry.operation_context["organisation"]
                expected = []
            elif not entry.success:
                expected = []
            elif entry.operation_type is OperationType.REFUND:
                assert entry.reference is not None
                expected = sorted(s.user_id for s in shares[int(entry.reference)])
            else:
                expected = [] if organisation is None else [organisation]
            assert payers == expected, (entry, shares[entry.id])


def refusals(log: dict[str, list[Transaction]]) -> Counter[str]:
    """The members' refused spending by whose budget refused it: ``own`` for their cap."""
    return Counter(
        str(e.operation_context.get("refused_by", "own"))
        for m in MEMBERS
        for e in log[m]
        if not e.success
    )


def moves(log: dict[str, list[Transaction]]) -> Counter[Any]:
    """The members' moves, by where they went."""
    return Counter(
        e.operation_context["organisation"]
        for m in MEMBERS
        for e in log[m]
        if e.operation_type is OperationType.LIMIT_CHANGE
    )


def asked(log: dict[str, list[Transaction]]) -> Counter[str | None]:
    """What the members asked to deduct or hold that their own caps let through to the
    organisation they were in (``None``: none), by organisation: the demand on its budget."""
    demand: Counter[str | None] = Counter()
    for member in MEMBERS:
        organisation: str | None = ORGANISATION
        for entry in log[member]:
            if entry.operation_type is OperationType.LIMIT_CHANGE:
                organisation = entry.operation_context["organisation"]
            elif entry.operation_type in (OperationType.DEDUCT, OperationType.RESERVE) and (
                entry.success or "refused_by" in entry.operation_context
            ):
                demand[organisation] += entry.amount
    return demand


def assert_real_work(
    budgets: Budgets, outcomes: Sequence[Outcome], log: dict[str, list[Transaction]]
) -> str:
    """Enough of every kind of success and refusal that the checks above were not vacuous,
    and a demand on ``org`` of about three times its allowance; a summary for the output."""
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        counts.update(outcome.counts)
    refused, moved, demand = refusals(log), moves(log), asked(log)
    told = {k.removeprefix("refused by "): v for k, v in counts.items() if "refused by" in k}
    assert told == dict(refused), f"callers were told {told}, the log says {dict(refused)}"
    summary = (
        f"outcomes {dict(sorted(counts.items()))};"
        f" moved to {dict(moved)}; asked of org past its members' caps {demand[ORGANISATION]}"
        f" ({demand[ORGANISATION] / budgets.organisation:.1f}x its allowance),"
        f" of other {demand[OTHER]} ({demand[OTHER] / budgets.other:.1f}x)"
    )
    assert 2 <= demand[ORGANISATION] / budgets.organisation <= 6, summary
    kinds = (
        "deduct",
        "commit",
        "release",
        "refund",
        "partial refund",
        "move",
        "refused: insufficient tokens",
        "move refused: its own hold",
    )
    assert all(counts[kind] >= 3 for kind in kinds), summary
    # which organisation runs out first is the draw's: at least one of them must refuse
    assert refused["own"] >= 3, summary
    assert refused[ORGANISATION] + refused[OTHER] >= 3, summary
    assert all(moved[place] >= 3 for place in (ORGANISATION, OTHER, None)), summary
    return summary


def assert_organisation_ledger_consistent(
    ledger: TokenLedger, budgets: Budgets, outcomes: Sequence[Outcome]
) -> str:
    """Every check above, and ``reconcile()``; the summary of what the workers did."""
    surprises = [s for outcome in outcomes for s in outcome.surprises]
    assert surprises == [], f"{len(surprises)} surprises, the first:\n" + "\n".join(surprises[:3])
    log = logs(ledger)
    assert_no_budget_overspent(ledger, budgets, log)
    assert_each_budget_adds_up(ledger, log, outcomes)
    assert_shares_match_their_members(log)
    assert ledger.reconcile() == []
    return assert_real_work(budgets, outcomes, log)


def sqlite_churn(path: str, operations: int, seed: int, start: float) -> Outcome:
    """:func:`churn` in a worker process, on its own ledger of the SQLite file."""
    with TokenLedger.sqlite(path) as ledger:
        return churn(ledger, operations, seed, start)


def deal(total: int, workers: int) -> Iterator[int]:
    """``total`` operations dealt to ``workers`` as evenly as they go."""
    for worker in range(workers):
        yield total // workers + (worker < total % workers)
