"""Organisations: a member's spending is recorded against it and every budget above it."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    MonthlyResetPolicy,
    OperationType,
    ReservationClosed,
    ReservationsHeld,
    Threshold,
    TokenLedger,
    Transaction,
)
from token_ledger.organisations import MAX_DEPTH
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import START, ContractBase

UTC = timezone.utc


def entries(ledger: TokenLedger, user_id: str) -> list[Transaction]:
    """Every entry of the account, oldest first."""
    return list(reversed(ledger.history(user_id, limit=1000)))


def figures(ledger: TokenLedger, user_id: str) -> tuple[int, int, int]:
    """``monthly_used``, ``reserved`` and ``total_remaining`` of the account's status."""
    status = ledger.status(user_id)
    return status.monthly_used, status.reserved, status.total_remaining


def share_of(ledger: TokenLedger, member_entry: Transaction) -> list[Transaction]:
    """The organisations' shares of a member's entry, through the port, root first."""
    assert member_entry.id is not None
    with ledger.repository.unit_of_work() as work:
        return work.entries_mirroring(member_entry.id)


def acme_with_members(ledger: TokenLedger) -> None:
    """Organisation ``acme`` (1,000 a month) with members ``ana`` (400) and ``ben`` (1,000)."""
    ledger.open_account("acme", monthly_limit=1000)
    ledger.open_account("ana", monthly_limit=400, organisation_id="acme")
    ledger.open_account("ben", monthly_limit=1000, organisation_id="acme")


class OrganisationsContract(ContractBase):
    """Members spend from their organisations' budgets too, each budget recorded on its own."""

    # spending

    def test_ensure_account_opens_a_member_or_answers_the_account_there_is(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("acme", monthly_limit=1000)

        opened = ledger.ensure_account("ana", monthly_limit=400, organisation_id="acme")
        found = ledger.ensure_account("ana", monthly_limit=400, organisation_id="acme")

        assert opened.organisation_id == found.organisation_id == "acme"
        assert ledger.status("ana").organisation_remaining == 1000
        with ledger.repository.unit_of_work() as work:
            assert work.members_of("acme") == ["ana"]
        assert ledger.history(limit=1000) == []

    def test_a_members_deduction_is_recorded_against_it_and_its_organisation(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)

        result = ledger.deduct("ana", 150, feature="chat", context={"job": 7})

        spent = result.transaction
        assert (spent.user_id, spent.operation_type, spent.amount, spent.success) == (
            "ana",
            OperationType.DEDUCT,
            150,
            True,
        )
        assert spent.operation_context == {"job": 7}
        assert spent.member_entry_id is None
        (share,) = entries(ledger, "acme")
        assert (share.operation_type, share.amount, share.success, share.feature) == (
            OperationType.DEDUCT,
            150,
            True,
            "chat",
        )
        assert share.operation_context["member"] == "ana"
        assert share.member_entry_id == spent.id
        assert share.effects.usage == 150
        assert share_of(ledger, spent) == [share]
        assert result.monthly_remaining == 250
        ana = ledger.status("ana")
        assert (ana.monthly_used, ana.total_remaining) == (150, 250)
        assert (ana.organisation_id, ana.organisation_remaining, ana.available) == (
            "acme",
            850,
            250,
        )
        acme = ledger.status("acme")
        assert (acme.monthly_used, acme.total_remaining) == (150, 850)
        assert (acme.organisation_id, acme.organisation_remaining, acme.available) == (
            None,
            None,
            850,
        )
        assert ledger.get_account("ana").organisation_id == "acme"
        assert ledger.reconcile() == []

    def test_a_member_may_spend_no_more_than_its_organisation_has_left(
        self, ledger: TokenLedger
    ) -> None:
        """``available`` is the least of the member's own ``total_remaining`` and
        ``organisation_remaining``."""
        acme_with_members(ledger)
        ledger.deduct("ben", 700)

        ana = ledger.status("ana")
        assert (ana.total_remaining, ana.organisation_remaining, ana.available) == (400, 300, 300)
        ben = ledger.status("ben")
        assert (ben.total_remaining, ben.organisation_remaining, ben.available) == (300, 300, 300)
        ledger.deduct("ana", 300)
        assert ledger.status("ben").available == 0
        assert ledger.status("acme").total_remaining == 0
        assert ledger.reconcile() == []

    def test_a_deduction_the_organisation_cannot_pay_is_refused_once_on_the_member(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.deduct("ben", 900)
        before = (figures(ledger, "acme"), figures(ledger, "ana"), figures(ledger, "ben"))
        acme_before = entries(ledger, "acme")

        with pytest.raises(InsufficientTokens) as refusal:
            ledger.deduct("ana", 101, feature="chat")  # fits ana's 400, not acme's 100

        assert (refusal.value.user_id, refusal.value.requested, refusal.value.remaining) == (
            "ana",
            101,
            100,
        )
        assert refusal.value.refused_by == "acme"

        (refused,) = ledger.history("ana", limit=1000)
        assert (refused.operation_type, refused.amount, refused.success) == (
            OperationType.DEDUCT,
            101,
            False,
        )
        assert refused.operation_context["refused_by"] == "acme"
        assert refused.effects.usage == 0
        assert refused.effects.grants == ()
        assert entries(ledger, "acme") == acme_before
        assert ledger.history(success=False, limit=1000) == [refused]
        after = (figures(ledger, "acme"), figures(ledger, "ana"), figures(ledger, "ben"))
        assert after == before == ((900, 0, 100), (0, 0, 400), (900, 0, 100))
        assert ledger.alerts().failed_transactions.value == 1
        ledger.deduct("ana", 100)
        assert ledger.reconcile() == []

    def test_a_deduction_past_the_members_own_cap_writes_nothing_on_the_organisation(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)

        with pytest.raises(InsufficientTokens) as refusal:
            ledger.deduct("ana", 401)

        assert (refusal.value.remaining, refusal.value.refused_by) == (400, None)
        (refused,) = ledger.history("ana", limit=1000)
        assert (refused.amount, refused.success) == (401, False)
        assert "refused_by" not in refused.operation_context
        assert ledger.history("acme") == []
        assert share_of(ledger, refused) == []
        assert figures(ledger, "acme") == (0, 0, 1000)
        assert figures(ledger, "ana") == (0, 0, 400)

    def test_the_organisations_grants_and_overage_count_for_its_members(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("acme", monthly_limit=100)
        ledger.set_limit("acme", overage_limit=20)
        grant = ledger.grant("acme", 50, reason="purchase").reference
        ledger.open_account("ana", monthly_limit=1000, organisation_id="acme")

        allowance = ledger.deduct("ana", 100).transaction
        granted = ledger.deduct("ana", 50).transaction
        overage = ledger.deduct("ana", 20).transaction
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ana", 1)

        shares = [share_of(ledger, spent) for spent in (allowance, granted, overage)]
        assert [[(s.effects.usage, dict(s.effects.grants)) for s in found] for found in shares] == [
            [(100, {})],
            [(0, {grant: -50})],
            [(20, {})],
        ]
        acme = ledger.status("acme")
        assert (acme.monthly_used, acme.grant_balance, acme.overage_used) == (120, 0, 20)
        assert acme.total_remaining == 0
        ana = ledger.status("ana")
        assert (ana.monthly_used, ana.total_remaining, ana.available) == (170, 830, 0)
        assert ledger.history("ana", limit=1)[0].operation_context["refused_by"] == "acme"
        assert ledger.reconcile() == []

    def test_a_path_of_three_levels_charges_every_budget_on_it(self, ledger: TokenLedger) -> None:
        ledger.open_account("root", monthly_limit=1000)
        ledger.open_account("mid", monthly_limit=500, organisation_id="root")
        ledger.open_account("leaf", monthly_limit=300, organisation_id="mid")
        ledger.deduct("mid", 250)  # mid's own spending is root's too

        spent = ledger.deduct("leaf", 100, feature="chat").transaction

        shares = share_of(ledger, spent)
        assert [(s.user_id, s.amount, s.member_entry_id) for s in shares] == [
            ("root", 100, spent.id),
            ("mid", 100, spent.id),
        ]
        assert [s.operation_context["member"] for s in shares] == ["leaf", "leaf"]
        assert [figures(ledger, user) for user in ("root", "mid", "leaf")] == [
            (350, 0, 650),
            (350, 0, 150),
            (100, 0, 200),
        ]
        leaf = ledger.status("leaf")
        assert (leaf.organisation_id, leaf.organisation_remaining, leaf.available) == (
            "mid",
            150,
            150,
        )
        with pytest.raises(InsufficientTokens):
            ledger.deduct("leaf", 151)
        assert ledger.history("leaf", limit=1)[0].operation_context["refused_by"] == "mid"
        with ledger.repository.unit_of_work() as work:
            assert [a.user_id for a in work.load_path("leaf")] == ["root", "mid", "leaf"]
            assert [a.user_id for a in work.load_path("root")] == ["root"]
            assert work.load_path("nobody") == []
            assert work.members_of("root") == ["mid"]
            assert work.members_of("leaf") == []
        assert spent.id is not None

        refund = ledger.refund(spent.id, 40)

        backs = [ledger.history(user, operation_type="refund") for user in ("root", "mid")]
        assert [[(e.amount, e.member_entry_id) for e in found] for found in backs] == [
            [(40, refund.id)],
            [(40, refund.id)],
        ]
        assert [figures(ledger, user) for user in ("root", "mid", "leaf")] == [
            (310, 0, 690),
            (310, 0, 190),
            (60, 0, 240),
        ]
        assert ledger.reconcile() == []

    def test_a_retried_member_deduction_writes_no_second_share(self, ledger: TokenLedger) -> None:
        acme_with_members(ledger)

        first = ledger.deduct("ana", 40, idempotency_key="job-1")
        again = ledger.deduct("ana", 40, idempotency_key="job-1")

        assert again.transaction == first.transaction
        assert [e.amount for e in ledger.history("acme")] == [40]
        assert share_of(ledger, first.transaction) == ledger.history("acme")
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((40, 0, 360), (40, 0, 960))
        with pytest.raises(IdempotencyConflict):
            ledger.deduct("ben", 40, idempotency_key="job-1")
        assert ledger.history("acme", limit=1000) == share_of(ledger, first.transaction)

        ledger.open_account("globex", monthly_limit=1000)
        ledger.move_to_organisation("ana", "globex")
        assert ledger.deduct("ana", 40, idempotency_key="job-1").transaction == first.transaction
        assert ledger.history("globex") == []
        assert figures(ledger, "acme") == (40, 0, 960)

    def test_a_retried_member_hold_holds_one_share(self, ledger: TokenLedger) -> None:
        acme_with_members(ledger)

        first = ledger.reserve("ana", 50, idempotency_key="hold-1")
        again = ledger.reserve("ana", 50, idempotency_key="hold-1")

        assert again == first
        assert [(e.operation_type, e.amount) for e in ledger.history("acme")] == [
            (OperationType.RESERVE, 50)
        ]
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 50, 350), (0, 50, 950))

    def test_a_retried_refusal_says_what_the_refusal_said_and_writes_nothing(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.deduct("ben", 900)
        with pytest.raises(InsufficientTokens) as first:
            ledger.deduct("ana", 150, idempotency_key="job-2")
        before = ledger.history(limit=1000)

        with pytest.raises(InsufficientTokens) as again:
            ledger.deduct("ana", 150, idempotency_key="job-2")

        assert ledger.history(limit=1000) == before
        assert (again.value.requested, again.value.refused_by) == (150, "acme")
        assert again.value.remaining == first.value.remaining == 100

    # reservations

    def test_a_members_hold_holds_a_share_on_the_organisation_until_committed(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)

        hold = ledger.reserve("ana", 200, feature="llm")

        share_id = f"{hold.id}/acme"
        with ledger.repository.unit_of_work() as work:
            share = work.find_reservation(share_id)
        assert share is not None
        assert (share.user_id, share.amount, share.expires_at) == ("acme", 200, hold.expires_at)
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 200, 200), (0, 200, 800))
        with pytest.raises(InvalidInput):
            ledger.commit(share_id, 5)
        with pytest.raises(InvalidInput):
            ledger.release(share_id)

        committed = ledger.commit(hold.id, 120)

        assert committed.monthly_remaining == 280
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((120, 0, 280), (120, 0, 880))
        acme = [(e.operation_type, e.amount, e.reference) for e in entries(ledger, "acme")]
        assert acme == [
            (OperationType.RESERVE, 200, share_id),
            (OperationType.COMMIT, 120, share_id),
        ]
        commit_share = entries(ledger, "acme")[-1]
        assert commit_share.member_entry_id == committed.transaction.id
        assert commit_share.operation_context["member"] == "ana"
        with pytest.raises(ReservationClosed):
            ledger.release(hold.id)
        assert ledger.reconcile() == []

    def test_releasing_a_members_hold_releases_the_organisations_share(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.deduct("ben", 100)
        hold = ledger.reserve("ana", 50)

        released = ledger.release(hold.id)

        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 0, 400), (100, 0, 900))
        release = entries(ledger, "acme")[-1]
        assert (release.operation_type, release.amount, release.reference) == (
            OperationType.RELEASE,
            50,
            f"{hold.id}/acme",
        )
        assert release.member_entry_id == released.transaction.id
        assert ledger.reconcile() == []

    def test_a_hold_the_organisation_cannot_cover_is_refused_on_the_member(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.deduct("ben", 700)

        with pytest.raises(InsufficientTokens) as refusal:
            ledger.reserve("ana", 301)

        assert (refusal.value.remaining, refusal.value.refused_by) == (300, "acme")

        refused = ledger.history("ana", limit=1000)
        assert [(e.operation_type, e.amount, e.success) for e in refused] == [
            (OperationType.RESERVE, 301, False)
        ]
        assert refused[0].operation_context["refused_by"] == "acme"
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 0, 400), (700, 0, 300))
        assert [e.operation_type for e in ledger.history("acme")] == [OperationType.DEDUCT]

    def test_an_expired_member_hold_frees_its_share_on_the_organisation_too(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        acme_with_members(ledger)
        hold = ledger.reserve("ana", 300, ttl=timedelta(minutes=5))
        assert figures(ledger, "acme") == (0, 300, 700)

        clock.advance(timedelta(minutes=5))

        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 0, 400), (0, 0, 1000))
        ledger.deduct("ana", 10)
        for user, reference in (("ana", hold.id), ("acme", f"{hold.id}/acme")):
            (release,) = ledger.history(user, operation_type="release")
            assert (release.reference, release.amount) == (reference, 300)
            assert release.operation_context["reason"] == "expired"
        with pytest.raises(ReservationClosed):
            ledger.commit(hold.id, 1)
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((10, 0, 390), (10, 0, 990))
        assert ledger.reconcile() == []

    def test_an_organisations_own_write_frees_the_share_of_an_expired_member_hold(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Each budget releases its expired holds at its own next write: ben's deduction
        releases acme's share of ana's hold, ana's own hold at ana's next write."""
        acme_with_members(ledger)
        hold = ledger.reserve("ana", 300, ttl=timedelta(minutes=5))
        clock.advance(timedelta(minutes=6))

        ledger.deduct("ben", 700)

        (share,) = ledger.history("acme", operation_type="release")
        assert (share.reference, share.amount, share.operation_context["reason"]) == (
            f"{hold.id}/acme",
            300,
            "expired",
        )
        assert ledger.history("ana", operation_type="release") == []
        with pytest.raises(ReservationClosed):
            ledger.commit(hold.id, 1)
        ledger.deduct("ana", 300)
        (own,) = ledger.history("ana", operation_type="release")
        assert (own.reference, own.amount) == (hold.id, 300)
        assert len(ledger.history("acme", operation_type="release")) == 1
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((300, 0, 100), (1000, 0, 0))
        assert ledger.reconcile() == []

    def test_a_hold_settled_after_a_later_clock_released_its_share(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Writers' clocks differ: one a minute ahead saw acme's shares expire and released
        them; the member's commit, by a clock still within the ttl, is spent from acme's
        budget as a deduction would be, and its release takes no part on acme."""
        acme_with_members(ledger)
        committed = ledger.reserve("ana", 300, ttl=timedelta(minutes=5))
        released = ledger.reserve("ana", 100, ttl=timedelta(minutes=5))
        clock.advance(timedelta(minutes=6))
        ledger.deduct("ben", 10)  # releases both shares on acme
        assert figures(ledger, "acme") == (10, 0, 990)

        clock.advance(timedelta(minutes=-2))
        commit = ledger.commit(committed.id, 200)
        ledger.release(released.id)

        share = ledger.history("acme", limit=1)[0]
        assert (share.operation_type, share.amount, share.reference) == (
            OperationType.COMMIT,
            200,
            f"{committed.id}/acme",
        )
        assert share.member_entry_id == commit.transaction.id
        assert share.effects.usage == 200
        assert len(ledger.history("acme", operation_type="release")) == 2
        assert [figures(ledger, user) for user in ("ana", "acme", "ben")] == [
            (200, 0, 200),
            (210, 0, 790),
            (10, 0, 990),
        ]
        assert ledger.reconcile() == []

    # refunds

    def test_a_refund_of_a_members_entry_gives_back_to_member_and_organisation(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        spent = ledger.deduct("ana", 100).transaction
        assert spent.id is not None
        (share,) = share_of(ledger, spent)
        assert share.id is not None

        first = ledger.refund(spent.id, 30, reason="outage")

        (back,) = ledger.history("acme", operation_type="refund")
        assert (first.user_id, first.amount, first.reference) == ("ana", 30, str(spent.id))
        assert (back.amount, back.member_entry_id) == (30, first.id)
        assert back.reference == str(share.id)
        assert back.operation_context["member"] == "ana"
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((70, 0, 330), (70, 0, 930))
        with pytest.raises(InvalidInput):
            ledger.refund(share.id)
        assert len(ledger.history("acme", operation_type="refund")) == 1

        second = ledger.refund(spent.id, 30)
        rest = ledger.refund(spent.id)

        assert (second.amount, rest.amount) == (30, 40)
        refunds = ledger.history("acme", operation_type="refund")
        assert [(e.amount, e.member_entry_id) for e in reversed(refunds)] == [
            (30, first.id),
            (30, second.id),
            (40, rest.id),
        ]
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 0, 400), (0, 0, 1000))
        with pytest.raises(InvalidAmount):
            ledger.refund(spent.id, 1)
        assert len(ledger.history("acme", operation_type="refund")) == 3
        assert ledger.reconcile() == []

    def test_a_refund_of_a_members_commit_is_given_back_once_however_often_retried(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        hold = ledger.reserve("ana", 200)
        commit = ledger.commit(hold.id, 150).transaction
        assert commit.id is not None

        first = ledger.refund(commit.id, 50, idempotency_key="refund-1")
        again = ledger.refund(commit.id, 50, idempotency_key="refund-1")

        assert again == first
        (back,) = ledger.history("acme", operation_type="refund")
        (share,) = share_of(ledger, commit)
        assert (back.amount, back.reference, back.member_entry_id) == (
            50,
            str(share.id),
            first.id,
        )
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((100, 0, 300), (100, 0, 900))
        assert ledger.reconcile() == []

    # moving

    def test_a_move_is_recorded_and_charges_the_new_organisation_from_then_on(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.open_account("globex", monthly_limit=500)
        before = ledger.deduct("ana", 100).transaction

        moved = ledger.move_to_organisation("ana", "globex")

        assert moved.organisation_id == "globex"
        change = ledger.history("ana", operation_type="limit_change")[0]
        assert change.operation_context == {
            "previous_limit": 400,
            "previous_organisation": "acme",
            "organisation": "globex",
        }
        after = ledger.deduct("ana", 50).transaction
        assert [s.user_id for s in share_of(ledger, before)] == ["acme"]
        assert [s.user_id for s in share_of(ledger, after)] == ["globex"]
        assert [figures(ledger, user) for user in ("ana", "acme", "globex")] == [
            (150, 0, 250),
            (100, 0, 900),
            (50, 0, 450),
        ]
        assert ledger.status("ana").organisation_remaining == 450
        with ledger.repository.unit_of_work() as work:
            assert work.members_of("acme") == ["ben"]
            assert work.members_of("globex") == ["ana"]

        alone = ledger.move_to_organisation("ana", None)

        assert alone.organisation_id is None
        assert ledger.history("ana", operation_type="limit_change")[0].operation_context == {
            "previous_limit": 400,
            "previous_organisation": "globex",
            "organisation": None,
        }
        ledger.deduct("ana", 10)
        status = ledger.status("ana")
        assert (status.organisation_id, status.organisation_remaining, status.available) == (
            None,
            None,
            240,
        )
        assert figures(ledger, "globex") == (50, 0, 450)
        assert ledger.reconcile() == []

    def test_a_refund_after_a_move_goes_back_to_the_organisation_that_paid(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.open_account("globex", monthly_limit=500)
        spent = ledger.deduct("ana", 100).transaction
        assert spent.id is not None
        ledger.move_to_organisation("ana", "globex")
        ledger.deduct("ana", 20)

        refund = ledger.refund(spent.id, 60)

        (back,) = ledger.history("acme", operation_type="refund")
        assert (back.amount, back.member_entry_id) == (60, refund.id)
        assert ledger.history("globex", operation_type="refund") == []
        assert [figures(ledger, user) for user in ("ana", "acme", "globex")] == [
            (60, 0, 340),
            (40, 0, 960),
            (20, 0, 480),
        ]
        assert ledger.reconcile() == []

    def test_an_organisation_that_moves_takes_its_members_along(self, ledger: TokenLedger) -> None:
        acme_with_members(ledger)
        ledger.open_account("holding", monthly_limit=5000)
        before = ledger.deduct("ana", 10).transaction

        ledger.move_to_organisation("acme", "holding")

        after = ledger.deduct("ana", 20).transaction
        assert [s.user_id for s in share_of(ledger, before)] == ["acme"]
        assert [s.user_id for s in share_of(ledger, after)] == ["holding", "acme"]
        assert [figures(ledger, user) for user in ("holding", "acme", "ana")] == [
            (20, 0, 4980),
            (30, 0, 970),
            (30, 0, 370),
        ]
        assert ledger.status("ana").organisation_remaining == 970
        with ledger.repository.unit_of_work() as work:
            assert [a.user_id for a in work.load_path("ben")] == ["holding", "acme", "ben"]
        assert ledger.reconcile() == []

    def test_a_move_to_the_same_organisation_writes_nothing(self, ledger: TokenLedger) -> None:
        acme_with_members(ledger)
        before = ledger.history(limit=1000)

        assert ledger.move_to_organisation("ana", "acme").organisation_id == "acme"
        assert ledger.move_to_organisation("acme", None).organisation_id is None
        assert ledger.history(limit=1000) == before

    def test_an_account_cannot_join_one_of_its_own_members(self, ledger: TokenLedger) -> None:
        ledger.open_account("root", monthly_limit=1000)
        ledger.open_account("mid", monthly_limit=500, organisation_id="root")
        ledger.open_account("leaf", monthly_limit=300, organisation_id="mid")
        before = ledger.history(limit=1000)

        with pytest.raises(InvalidInput):
            ledger.move_to_organisation("root", "leaf")
        with pytest.raises(InvalidInput):
            ledger.move_to_organisation("root", "mid")
        with pytest.raises(InvalidInput):
            ledger.move_to_organisation("mid", "mid")

        assert ledger.history(limit=1000) == before
        assert [ledger.get_account(u).organisation_id for u in ("root", "mid", "leaf")] == [
            None,
            "root",
            "mid",
        ]

    def test_a_member_holding_a_reservation_cannot_move(self, ledger: TokenLedger) -> None:
        acme_with_members(ledger)
        ledger.open_account("globex", monthly_limit=500)
        hold = ledger.reserve("ana", 50)
        before = ledger.history(limit=1000)

        with pytest.raises(ReservationsHeld) as refused:
            ledger.move_to_organisation("ana", "globex")
        with pytest.raises(ReservationsHeld):
            ledger.move_to_organisation("ana", None)

        ledger.open_account("holding", monthly_limit=5000)
        with pytest.raises(ReservationsHeld) as holding:
            ledger.move_to_organisation("acme", "holding")  # acme holds ana's share

        assert (refused.value.user_id, refused.value.count) == ("ana", 1)
        assert (holding.value.user_id, holding.value.count) == ("acme", 1)
        assert [e for e in ledger.history(limit=1000) if e.user_id != "holding"] == before
        assert ledger.get_account("acme").organisation_id is None
        assert ledger.get_account("ana").organisation_id == "acme"
        assert [figures(ledger, user) for user in ("ana", "acme", "globex")] == [
            (0, 50, 350),
            (0, 50, 950),
            (0, 0, 500),
        ]
        ledger.release(hold.id)
        assert ledger.move_to_organisation("ana", "globex").organisation_id == "globex"
        assert ledger.reconcile() == []

    def test_a_missing_organisation_is_refused_and_nothing_is_stored(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        before = ledger.history(limit=1000)

        with pytest.raises(AccountNotFound):
            ledger.move_to_organisation("ana", "nowhere")
        with pytest.raises(AccountNotFound):
            ledger.open_account("cat", monthly_limit=10, organisation_id="nowhere")
        with pytest.raises(AccountNotFound):
            ledger.ensure_account("cat", monthly_limit=10, organisation_id="nowhere")
        with pytest.raises(AccountNotFound):
            ledger.move_to_organisation("nobody", "acme")
        with pytest.raises(AccountNotFound):
            ledger.move_to_organisation("nobody", None)

        assert ledger.history(limit=1000) == before
        assert ledger.get_account("ana").organisation_id == "acme"
        with pytest.raises(AccountNotFound):
            ledger.get_account("cat")
        assert ledger.health().total_users == 3

    def test_paths_hold_at_most_max_depth_accounts(self, ledger: TokenLedger) -> None:
        """Accounts ``level-0`` (the root) to ``level-{MAX_DEPTH - 1}``: a path of
        ``MAX_DEPTH`` accounts, which no account can join nor lengthen by moving."""
        levels = [f"level-{n}" for n in range(MAX_DEPTH)]
        ledger.open_account(levels[0], monthly_limit=1000)
        for above, user in itertools.pairwise(levels):
            ledger.open_account(user, monthly_limit=1000, organisation_id=above)
        ledger.open_account("other-root", monthly_limit=1000)
        ledger.open_account("other-member", monthly_limit=1000, organisation_id="other-root")
        before = ledger.history(limit=1000)

        with pytest.raises(InvalidInput):
            ledger.open_account("too-deep", monthly_limit=10, organisation_id=levels[-1])
        with pytest.raises(InvalidInput):
            ledger.move_to_organisation("other-member", levels[-1])
        with pytest.raises(InvalidInput):  # its member would be one level too deep
            ledger.move_to_organisation("other-root", levels[-2])

        assert ledger.history(limit=1000) == before
        with pytest.raises(AccountNotFound):
            ledger.get_account("too-deep")
        spent = ledger.deduct(levels[-1], 5).transaction
        assert [s.user_id for s in share_of(ledger, spent)] == levels[:-1]
        assert ledger.status(levels[0]).monthly_used == 5
        assert ledger.move_to_organisation("other-root", levels[-3]).organisation_id == levels[-3]
        assert ledger.reconcile() == []

    # periods, checks and reports

    def test_each_budget_starts_its_month_again_on_its_own(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """acme's periods run from the 15th at noon (its anchor), ana's by the calendar."""
        ledger.open_account("acme", monthly_limit=1000, reset_anchor=START)
        ledger.open_account("ana", monthly_limit=400, organisation_id="acme")
        ledger.deduct("ana", 300)

        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((0, 0, 400), (300, 0, 700))
        assert ledger.status("ana").available == 400
        ledger.deduct("ana", 100)
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((100, 0, 300), (400, 0, 600))
        assert [e.operation_type for e in ledger.history("acme", operation_type="reset")] == []
        assert len(ledger.history("ana", operation_type="reset")) == 1

        clock.set(datetime(2026, 2, 15, 12, tzinfo=UTC))
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((100, 0, 300), (0, 0, 1000))
        ledger.deduct("ana", 50)
        (reset,) = ledger.history("acme", operation_type="reset")
        assert reset.operation_context["previous_used"] == 400
        assert (figures(ledger, "ana"), figures(ledger, "acme")) == ((150, 0, 250), (50, 0, 950))
        assert ledger.reconcile() == []

    def test_a_refund_follows_each_budgets_own_period(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """A refund of a deduction of an ended period credits a grant; acme's periods run
        from the 15th at noon, ana's by the calendar, so one refund may do either on each."""
        ledger.open_account("acme", monthly_limit=1000, reset_anchor=START)
        ledger.open_account("ana", monthly_limit=400, organisation_id="acme")
        clock.set(datetime(2026, 1, 20, tzinfo=UTC))
        spent = ledger.deduct("ana", 100).transaction
        assert spent.id is not None

        clock.set(datetime(2026, 2, 2, tzinfo=UTC))  # ana's January ended, acme's period not
        ledger.refund(spent.id, 60)

        ana, acme = ledger.status("ana"), ledger.status("acme")
        assert (ana.monthly_used, ana.grant_balance, ana.total_remaining) == (0, 60, 460)
        assert (acme.monthly_used, acme.grant_balance, acme.total_remaining) == (40, 0, 960)

        clock.set(datetime(2026, 2, 16, tzinfo=UTC))  # acme's period ended too
        ledger.refund(spent.id)

        ana, acme = ledger.status("ana"), ledger.status("acme")
        assert (ana.monthly_used, ana.grant_balance, ana.total_remaining) == (0, 100, 500)
        assert (acme.monthly_used, acme.grant_balance, acme.total_remaining) == (0, 40, 1040)
        assert ledger.reconcile() == []

    def test_a_refund_after_an_organisations_change_of_zone_keeps_its_other_members_usage(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """ana spent before acme's UTC reset, ben after; acme then counts in Los Angeles,
        whose January began before ana's deduction. ana's refund credits acme with all of
        its 44, as an ended period's: acme's usage keeps ben's 30."""
        clock.set(datetime(2026, 1, 31, 18, tzinfo=UTC))
        ledger.open_account("acme", monthly_limit=1000)
        ledger.open_account("ana", monthly_limit=100, organisation_id="acme")
        ledger.open_account("ben", monthly_limit=100, organisation_id="acme")
        spent = ledger.deduct("ana", 44).transaction.id
        assert spent is not None
        clock.set(datetime(2026, 2, 1, 2, tzinfo=UTC))
        ledger.deduct("ben", 30)
        ledger.set_time_zone("acme", "America/Los_Angeles")

        ledger.refund(spent)

        ana, acme = ledger.status("ana"), ledger.status("acme")
        assert (acme.monthly_used, acme.grant_balance) == (30, 44)
        assert (ana.monthly_used, ana.grant_balance) == (0, 44)
        assert ledger.reconcile() == []

    def test_reconcile_health_and_alerts_cover_organisations_like_any_account(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        acme_with_members(ledger)
        ledger.open_account("globex", monthly_limit=1000)
        ledger.grant("acme", 100)
        spent = ledger.deduct("ana", 300, feature="chat").transaction
        assert spent.id is not None
        hold = ledger.reserve("ben", 400)
        ledger.commit(hold.id, 350)
        ledger.release(ledger.reserve("ana", 20).id)
        ledger.refund(spent.id, 120)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ben", 600)  # ben has 650 left, acme 1,100 - 530 = 570
        ledger.move_to_organisation("ana", "globex")
        ledger.deduct("ana", 100)
        ledger.reserve("ben", 10, ttl=timedelta(minutes=1))
        clock.advance(timedelta(minutes=2))
        ledger.deduct("ben", 420)  # acme: 180 + 350 + 420 = 950 of its 1,000 (and a grant)

        assert ledger.reconcile() == []
        assert [ledger.reconcile(user) for user in ("acme", "ana", "ben", "globex")] == [[]] * 4
        assert [figures(ledger, user) for user in ("acme", "ana", "ben", "globex")] == [
            (950, 0, 150),
            (280, 0, 120),
            (770, 0, 230),
            (100, 0, 900),
        ]
        assert ledger.status("ben").available == 150
        health = ledger.health()
        assert (health.total_users, health.current, health.stale) == (4, 4, 0)
        assert ledger.alerts().high_usage.value == 1  # acme, whose members spent it
        clock.set(datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC))
        assert ledger.health().stale == 4
        assert ledger.reset_all_stale() == 4
        assert ledger.health().ok
        assert ledger.reconcile() == []

    def test_an_organisations_threshold_fires_when_its_members_spending_crosses_it(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("acme", monthly_limit=100)
        ledger.set_thresholds("acme", [Threshold(80)])
        ledger.open_account("ana", monthly_limit=1000, organisation_id="acme")
        ledger.open_account("ben", monthly_limit=1000, organisation_id="acme")
        ledger.deduct("ana", 50)
        ledger.deduct("ben", 29)
        assert ledger.notifications() == []

        crossing = ledger.deduct("ben", 1).transaction
        ledger.deduct("ana", 5)

        [note] = ledger.notifications()
        (share,) = share_of(ledger, crossing)
        assert (note.user_id, note.threshold, note.occurrence) == ("acme", Threshold(80), 1)
        assert note.transaction_id == share.id
        assert (note.monthly_used, note.monthly_limit, note.total_remaining) == (80, 100, 20)

    def test_the_ledgers_default_thresholds_fire_for_member_and_organisation_alike(
        self, repository: TokenRepository, clock: MovableClock
    ) -> None:
        self.adopt_policy(repository, MonthlyResetPolicy())
        ledger = TokenLedger(repository, clock=clock, thresholds=[Threshold(50)])
        ledger.open_account("acme", monthly_limit=100)
        ledger.open_account("ana", monthly_limit=40, organisation_id="acme")
        ledger.open_account("ben", monthly_limit=100, organisation_id="acme")
        ledger.deduct("ben", 30)

        crossing = ledger.deduct("ana", 20).transaction  # ana at 50 %, acme at 50 %
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ana", 21)

        (share,) = share_of(ledger, crossing)
        assert [(n.user_id, n.transaction_id, n.monthly_used) for n in ledger.notifications()] == [
            ("ana", crossing.id, 20),
            ("acme", share.id, 50),
        ]

    def test_usage_counts_tokens_once_and_per_organisation_what_it_paid(
        self, ledger: TokenLedger
    ) -> None:
        """NOT DECIDED YET: whether ``usage()`` without filters leaves the organisations'
        shares out (so that no token counts twice). This asserts what the ledger does now:
        shares are left out of every report but ``usage(organisation=...)``, and
        ``usage(user_id=<organisation>)`` is the organisation's own spending only."""
        acme_with_members(ledger)
        spent = ledger.deduct("ana", 100, feature="chat").transaction
        assert spent.id is not None
        ledger.deduct("ben", 50)
        ledger.deduct("acme", 10)
        ledger.refund(spent.id, 20)

        everyone = ledger.usage()
        by_user = ledger.usage(by="user")
        of_acme = ledger.usage(user_id="acme")
        paid_by_acme = ledger.usage(organisation="acme", by="user")

        # NOT DECIDED YET (see the docstring): with shares counted, these would be 300 and
        # acme 160; what is asserted is what the ledger does today.
        assert [(r.tokens, r.spent, r.refunded) for r in everyone] == [(140, 160, 20)]
        assert [(r.user_id, r.tokens) for r in by_user] == [("acme", 10), ("ana", 80), ("ben", 50)]
        assert [(r.tokens, r.deductions) for r in of_acme] == [(10, 1)]
        assert [(r.user_id, r.tokens, r.refunds) for r in paid_by_acme] == [
            ("acme", 10, 0),
            ("ana", 80, 1),
            ("ben", 50, 0),
        ]
        assert ledger.usage(organisation="acme").total == 140
        assert ledger.usage(organisation="ana").total == 80

    def test_usage_of_an_organisation_counts_its_members_as_they_were_then(
        self, ledger: TokenLedger
    ) -> None:
        acme_with_members(ledger)
        ledger.open_account("globex", monthly_limit=1000)
        ledger.deduct("ana", 100, feature="chat")
        ledger.move_to_organisation("ana", "globex")
        ledger.deduct("ana", 30, feature="chat")
        ledger.deduct("ben", 5, feature="search")

        acme = ledger.usage(organisation="acme", by=("user", "feature"))
        globex = ledger.usage(organisation="globex", by="user")

        assert [(r.user_id, r.feature, r.tokens) for r in acme] == [
            ("ana", "chat", 100),
            ("ben", "search", 5),
        ]
        assert [(r.user_id, r.tokens) for r in globex] == [("ana", 30)]
        assert ledger.usage(organisation="acme", user_id="ana").total == 100
        assert ledger.usage(organisation="acme", feature="search").total == 5
        assert ledger.usage(user_id="ana").total == 130
