"""Threshold notifications: recorded once per crossing, with the write, read by cursor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidInput,
    MonthlyResetPolicy,
    Threshold,
    TokenLedger,
)
from token_ledger.repository import TokenRepository
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc
DEFAULTS = (Threshold(80), Threshold(100), Threshold.nothing_left())


def _fired(ledger: TokenLedger, after: int = 0) -> list[tuple[str, str, int]]:
    return [(n.user_id, n.threshold.key, n.occurrence) for n in ledger.notifications(after=after)]


class NotificationsContract(ContractBase):
    """Threshold notifications: exactly once per crossing, in the write's unit of work."""

    @pytest.fixture
    def noting(self, repository: TokenRepository, clock: MovableClock) -> TokenLedger:
        """A ledger whose default thresholds are 80 %, 100 % and nothing left."""
        self.adopt_policy(repository, MonthlyResetPolicy())
        return TokenLedger(repository, clock=clock, thresholds=DEFAULTS)

    def test_a_ledger_without_thresholds_records_no_notification(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 10)

        assert ledger.notifications() == []

    def test_each_threshold_fires_once_when_a_deduction_reaches_it(
        self, noting: TokenLedger
    ) -> None:
        """Below a threshold nothing fires; landing exactly on it fires it, once."""
        noting.open_account("u1", monthly_limit=100)
        noting.deduct("u1", 79)
        assert noting.notifications() == []

        crossing = noting.deduct("u1", 1)
        noting.deduct("u1", 5)

        [note] = noting.notifications()
        assert (note.user_id, note.threshold, note.occurrence) == ("u1", Threshold(80), 1)
        assert note.transaction_id == crossing.transaction.id
        assert (note.monthly_used, note.monthly_limit, note.total_remaining) == (80, 100, 20)
        assert note.period_start == datetime(2026, 1, 1, tzinfo=UTC)
        assert note.id is not None
        assert note.id > 0

    def test_one_write_past_several_thresholds_fires_each_in_order(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("u1", monthly_limit=100)
        spent = noting.deduct("u1", 100)

        notes = noting.notifications()
        assert [n.threshold.key for n in notes] == ["80%", "100%", "nothing_left"]
        assert {n.transaction_id for n in notes} == {spent.transaction.id}
        ids = [n.id or 0 for n in notes]
        assert ids == sorted(ids)
        assert len(set(ids)) == 3

    def test_a_threshold_never_fires_twice_in_a_period_and_a_new_period_rearms_it(
        self, noting: TokenLedger, clock: MovableClock
    ) -> None:
        noting.open_account("u1", monthly_limit=10)
        for _ in range(10):
            noting.deduct("u1", 1)
        with pytest.raises(InsufficientTokens):
            noting.deduct("u1", 1)
        assert _fired(noting) == [("u1", "80%", 1), ("u1", "100%", 1), ("u1", "nothing_left", 1)]
        seen = noting.notifications()[-1].id or 0

        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        noting.deduct("u1", 8)

        [note] = noting.notifications(after=seen)
        assert (note.threshold, note.occurrence) == (Threshold(80), 1)
        assert note.period_start == datetime(2026, 2, 1, tzinfo=UTC)

    def test_a_refund_below_a_threshold_arms_it_again_for_the_period(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("u1", monthly_limit=100)
        noting.deduct("u1", 70)
        crossing = noting.deduct("u1", 15)
        assert crossing.transaction.id is not None
        noting.refund(crossing.transaction.id, 10)  # back to 75 %
        noting.deduct("u1", 4)  # 79 %: still below
        noting.deduct("u1", 1)  # 80 % again

        assert _fired(noting) == [("u1", "80%", 1), ("u1", "80%", 2)]

    def test_a_plan_change_arms_or_crosses_thresholds(self, noting: TokenLedger) -> None:
        """A raised limit moves usage below a threshold (arming it); a lowered one may
        take the account over one, which is a crossing like any other."""
        noting.open_account("u1", monthly_limit=100)
        noting.deduct("u1", 85)
        noting.set_limit("u1", 200)  # 42.5 %: armed again
        noting.deduct("u1", 75)  # 80 %
        lowered = noting.set_limit("u1", 160)  # 100 % and nothing left

        assert _fired(noting) == [
            ("u1", "80%", 1),
            ("u1", "80%", 2),
            ("u1", "100%", 1),
            ("u1", "nothing_left", 1),
        ]
        assert noting.notifications()[-1].monthly_limit == lowered.monthly_limit == 160

    def test_a_window_cap_lowered_to_what_the_window_used_is_nothing_left(
        self, noting: TokenLedger
    ) -> None:
        """Like a lowered limit, a lowered cap that leaves nothing is a crossing; raised
        again, the cap arms it, and the next one is the second occurrence."""
        noting.open_account("u1", monthly_limit=1000, window_caps={"day": 100})
        noting.deduct("u1", 60)
        lowered = noting.set_window_caps("u1", {"day": 60})
        noting.set_window_caps("u1", {"day": 60})  # the same caps: no change, no crossing
        noting.set_window_caps("u1", {"day": 80})  # 20 left: armed again
        noting.set_window_caps("u1", {"day": 50})  # over the cap: nothing left

        assert _fired(noting) == [("u1", "nothing_left", 1), ("u1", "nothing_left", 2)]
        first = noting.notifications()[0]
        assert first.transaction_id == noting.history("u1", limit=3)[2].id
        assert (first.monthly_used, first.total_remaining) == (60, 0)
        assert lowered.spendable == 0

    def test_voiding_the_grant_an_account_was_spending_from_is_nothing_left(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("u1", monthly_limit=10)
        grant = noting.grant("u1", 5)
        noting.deduct("u1", 10)  # 80 % and 100 %, with the grant left
        voided = noting.void_grant(grant.reference or "")

        assert _fired(noting) == [("u1", "80%", 1), ("u1", "100%", 1), ("u1", "nothing_left", 1)]
        assert noting.notifications()[-1].transaction_id == voided.id

    def test_a_refused_deduction_or_a_replay_records_nothing(self, noting: TokenLedger) -> None:
        noting.open_account("u1", monthly_limit=10)
        noting.deduct("u1", 9, idempotency_key="k")
        noting.deduct("u1", 9, idempotency_key="k")
        with pytest.raises(InsufficientTokens):
            noting.deduct("u1", 5)
        with pytest.raises(IdempotencyConflict):
            noting.deduct("u1", 1, idempotency_key="k")

        assert _fired(noting) == [("u1", "80%", 1)]

    def test_overage_counts_towards_percent_thresholds_and_nothing_left(
        self, repository: TokenRepository, clock: MovableClock
    ) -> None:
        self.adopt_policy(repository, MonthlyResetPolicy())
        ledger = TokenLedger(
            repository, clock=clock, thresholds=[Threshold(150), Threshold.nothing_left()]
        )
        ledger.open_account("u1", monthly_limit=10)
        ledger.set_limit("u1", overage_limit=10)
        ledger.deduct("u1", 14)
        assert ledger.notifications() == []

        ledger.deduct("u1", 6)

        assert _fired(ledger) == [("u1", "150%", 1), ("u1", "nothing_left", 1)]

    def test_grants_holds_and_commits_move_what_is_left(self, noting: TokenLedger) -> None:
        """Nothing left counts grants and holds: a hold that takes the rest reaches it,
        a grant arms it again, a commit may reach it."""
        noting.open_account("u1", monthly_limit=10)
        noting.deduct("u1", 7)
        hold = noting.reserve("u1", 3, ttl=timedelta(minutes=5))
        assert _fired(noting) == [("u1", "nothing_left", 1)]

        noting.grant("u1", 5)
        noting.commit(hold.id, 3)  # usage 10: 80 % and 100 %; 5 granted tokens left
        noting.deduct("u1", 5)

        assert _fired(noting) == [
            ("u1", "nothing_left", 1),
            ("u1", "80%", 1),
            ("u1", "100%", 1),
            ("u1", "nothing_left", 2),
        ]

    def test_an_account_of_its_own_thresholds_replaces_the_defaults(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("own", monthly_limit=100)
        noting.open_account("none", monthly_limit=100)
        account = noting.set_thresholds("own", [Threshold(50), Threshold(50)])
        assert account.thresholds == (Threshold(50),)
        assert noting.get_account("own").thresholds == (Threshold(50),)
        assert noting.set_thresholds("none", []).thresholds == ()

        noting.deduct("own", 100)
        noting.deduct("none", 100)

        assert _fired(noting) == [("own", "50%", 1)]

    def test_clearing_an_accounts_thresholds_brings_back_the_defaults(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("u1", monthly_limit=100)
        noting.set_thresholds("u1", [])
        noting.deduct("u1", 50)
        cleared = noting.set_thresholds("u1", None)
        assert cleared.thresholds is None
        assert noting.get_account("u1").thresholds is None

        noting.deduct("u1", 30)

        assert _fired(noting) == [("u1", "80%", 1)]

    def test_setting_thresholds_already_passed_fires_nothing(self, noting: TokenLedger) -> None:
        noting.open_account("u1", monthly_limit=100)
        noting.set_thresholds("u1", [])
        noting.deduct("u1", 90)
        noting.set_thresholds("u1", [Threshold(50), Threshold(95)])
        noting.deduct("u1", 1)
        assert noting.notifications() == []

        noting.deduct("u1", 4)

        assert _fired(noting) == [("u1", "95%", 1)]

    def test_bad_thresholds_and_unknown_accounts_are_refused_before_writing(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("u1", monthly_limit=100)
        for bad in ("80%", [80], [Threshold(80), "100%"], 80, None.__class__):
            with pytest.raises(InvalidInput):
                noting.set_thresholds("u1", bad)  # type: ignore[arg-type]
        for percent in (0, 1001, True, 80.0, "80"):
            with pytest.raises(InvalidInput):
                Threshold(percent)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            noting.set_thresholds("u1", [Threshold(n) for n in range(1, 40)])
        with pytest.raises(AccountNotFound):
            noting.set_thresholds("nobody", [Threshold(80)])

        assert noting.get_account("u1").thresholds is None

    def test_notifications_page_by_id_after_a_cursor(self, noting: TokenLedger) -> None:
        for n in range(5):
            noting.open_account(f"u{n}", monthly_limit=10)
            noting.deduct(f"u{n}", 8)
        every = noting.notifications()
        assert [n.user_id for n in every] == [f"u{n}" for n in range(5)]

        first = noting.notifications(limit=2)
        rest = noting.notifications(after=first[-1].id or 0, limit=10)

        assert first + rest == every
        assert noting.notifications(after=every[-1].id or 0) == []
        for after, limit in ((-1, 10), (0, 0), (0, 10_001), (True, 1), (0, "1")):
            with pytest.raises(InvalidInput):
                noting.notifications(after=after, limit=limit)  # type: ignore[arg-type]

    def test_a_named_cursor_is_kept_by_the_ledger_and_never_moves_back(
        self, noting: TokenLedger
    ) -> None:
        noting.open_account("u1", monthly_limit=10)
        noting.deduct("u1", 10)
        last = noting.notifications()[-1].id or 0
        assert noting.notification_cursor("mailer") == 0

        assert noting.acknowledge_notifications("mailer", last - 1) == last - 1
        assert noting.acknowledge_notifications("mailer", 1) == last - 1
        assert noting.notification_cursor("mailer") == last - 1
        assert noting.notification_cursor("billing") == 0
        after = noting.notification_cursor("mailer")
        assert [n.id for n in noting.notifications(after=after)] == [last]

        assert noting.acknowledge_notifications("mailer", last) == last
        with pytest.raises(InvalidInput):
            noting.acknowledge_notifications("mailer", last + 1)
        for consumer, up_to in (("", 1), ("mailer", -1), ("mailer", 1.0), (None, 1)):
            with pytest.raises(InvalidInput):
                noting.acknowledge_notifications(consumer, up_to)  # type: ignore[arg-type]
        assert noting.notification_cursor("mailer") == last

    def test_notifications_are_written_in_the_unit_of_work_of_the_write(
        self, repository: TokenRepository, noting: TokenLedger
    ) -> None:
        """Through the port: a unit of work that fails after storing a notification
        leaves none, and occurrences count the ones stored before."""
        noting.open_account("u1", monthly_limit=10)
        noting.deduct("u1", 8)
        [stored] = noting.notifications()

        class Failed(Exception):
            pass

        seen: list[tuple[int, int | None, int]] = []

        def store_then_fail() -> None:
            with repository.unit_of_work() as work:
                [again] = work.append_notifications([stored])
                seen.append((again.occurrence, again.id, work.last_notification_id()))
                raise Failed

        with pytest.raises(Failed):
            store_then_fail()

        [(occurrence, again_id, last)] = seen
        assert occurrence == 2
        assert again_id is not None
        assert again_id > (stored.id or 0)
        assert last == again_id
        assert noting.notifications() == [stored]
        with repository.unit_of_work() as work:
            assert work.last_notification_id() == stored.id
