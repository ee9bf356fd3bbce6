"""Spending windows: caps per hour, day or week, counted in each account's own zone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import (
    AccountNotFound,
    InsufficientTokens,
    InvalidInput,
    TokenLedger,
    WindowStatus,
)
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import START, ContractBase

UTC = timezone.utc
JAN_16 = datetime(2026, 1, 16, tzinfo=UTC)
"""The day after :data:`~token_ledger.testing.contract.base.START` (a Thursday), at
midnight UTC; midnight in New York is 05:00 UTC in winter."""

BAD_CAPS: list[tuple[str, object]] = [
    ("a month window", {"month": 5}),
    ("an unknown unit", {"fortnight": 5}),
    ("a unit not text", {5: 5}),
    ("a zero cap", {"day": 0}),
    ("a negative cap", {"day": -1}),
    ("a cap of text", {"day": "x"}),
    ("a cap of bool", {"day": True}),
    ("a fractional cap", {"day": 1.5}),
    ("a cap past the largest bigint", {"day": 2**63}),
    ("a number", 300),
    ("a text", "day"),
    ("a list of pairs", [("day", 300)]),
]


def windows(ledger: TokenLedger, user_id: str) -> list[tuple[str, int, int, int]]:
    """``unit``, ``cap``, ``used`` and ``remaining`` of each window the status shows."""
    return [(w.unit, w.cap, w.used, w.remaining) for w in ledger.status(user_id).windows]


def refused(ledger: TokenLedger, user_id: str) -> list[int]:
    """The amounts of the account's refused deductions, oldest first."""
    failed = ledger.history(user_id, operation_type="deduct", success=False, limit=1000)
    return [entry.amount for entry in reversed(failed)]


class WindowsContract(ContractBase):
    """Hour, day and week caps inside the period: enforced, shown and started again lazily."""

    def test_a_day_cap_refuses_past_it_until_the_accounts_own_midnight(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account(
            "ny", monthly_limit=10_000, time_zone="America/New_York", window_caps={"day": 300}
        )
        ledger.open_account("utc", monthly_limit=10_000, window_caps={"day": 300})
        for user in ("ny", "utc"):
            ledger.deduct(user, 200)
            ledger.deduct(user, 100)
        with pytest.raises(InsufficientTokens) as refusal:
            ledger.deduct("ny", 1)

        assert refusal.value.remaining == 0
        status = ledger.status("ny")
        assert status.windows == (
            WindowStatus("day", 300, 300, 0, datetime(2026, 1, 16, 5, tzinfo=UTC)),
        )
        assert (status.monthly_remaining, status.total_remaining, status.available) == (9700, 0, 0)
        assert refused(ledger, "ny") == [1]

        clock.set(JAN_16 + timedelta(hours=4, minutes=59, seconds=59))  # 23:59:59 in New York
        assert windows(ledger, "utc") == [("day", 300, 0, 300)]
        assert windows(ledger, "ny") == [("day", 300, 300, 0)]
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ny", 1)
        stored = ledger.get_account("ny").windows

        clock.set(JAN_16 + timedelta(hours=5))  # midnight in New York
        assert ledger.status("ny").windows == (
            WindowStatus("day", 300, 0, 300, datetime(2026, 1, 17, 5, tzinfo=UTC)),
        )
        assert ledger.get_account("ny").windows == stored  # started again by the next write
        ledger.deduct("ny", 300)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ny", 1)
        assert refused(ledger, "ny") == [1, 1, 1]
        assert ledger.status("ny").monthly_used == 600
        assert ledger.reconcile() == []

    def test_an_hour_cap_starts_again_on_the_hour(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10_000, window_caps={"hour": 50})
        ledger.deduct("u1", 30)

        clock.set(START + timedelta(minutes=59, seconds=59, microseconds=999_999))
        ledger.deduct("u1", 20)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)
        assert ledger.status("u1").windows == (
            WindowStatus("hour", 50, 50, 0, START + timedelta(hours=1)),
        )

        clock.set(START + timedelta(hours=1))
        ledger.deduct("u1", 50)
        assert windows(ledger, "u1") == [("hour", 50, 50, 0)]
        assert ledger.status("u1").monthly_used == 100
        assert refused(ledger, "u1") == [1]

    def test_a_local_day_lasts_23_or_25_hours_across_daylight_saving_time(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """New York's 2026-03-08 starts at 05:00 UTC (EST) and ends at 04:00 UTC (EDT);
        its 2026-11-01 repeats 01:00, and each of the two hours from 01:00 is a window."""
        clock.set(datetime(2026, 3, 8, 5, tzinfo=UTC))
        ledger.open_account(
            "ny", monthly_limit=10_000, time_zone="America/New_York", window_caps={"day": 100}
        )
        ledger.deduct("ny", 100)
        assert ledger.status("ny").windows[0].resets_at == datetime(2026, 3, 9, 4, tzinfo=UTC)
        clock.set(datetime(2026, 3, 9, 3, 59, tzinfo=UTC))
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ny", 1)
        clock.set(datetime(2026, 3, 9, 4, tzinfo=UTC))
        ledger.deduct("ny", 100)

        clock.set(datetime(2026, 11, 1, 5, 30, tzinfo=UTC))  # 01:30 EDT
        ledger.set_window_caps("ny", {"hour": 100})
        ledger.deduct("ny", 100)
        assert ledger.status("ny").windows[0].resets_at == datetime(2026, 11, 1, 6, tzinfo=UTC)
        clock.set(datetime(2026, 11, 1, 6, tzinfo=UTC))  # 01:00 EST
        ledger.deduct("ny", 100)
        assert ledger.status("ny").windows[0].resets_at == datetime(2026, 11, 1, 7, tzinfo=UTC)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ny", 1)
        assert refused(ledger, "ny") == [1, 1]

    def test_an_hour_starts_on_the_local_hour_of_a_zone_with_a_quarter_hour_offset(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Asia/Kathmandu is UTC+05:45: its hours start at a quarter past each UTC hour."""
        ledger.open_account(
            "ktm", monthly_limit=10_000, time_zone="Asia/Kathmandu", window_caps={"hour": 50}
        )
        ledger.deduct("ktm", 50)
        assert ledger.status("ktm").windows[0].resets_at == START + timedelta(minutes=15)

        clock.set(START + timedelta(minutes=14, seconds=59))
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ktm", 1)
        clock.set(START + timedelta(minutes=15))
        ledger.deduct("ktm", 50)
        assert windows(ledger, "ktm") == [("hour", 50, 50, 0)]

    def test_a_change_of_zone_keeps_what_the_running_day_used(self, ledger: TokenLedger) -> None:
        """12:00 UTC is 04:00 in Los Angeles: the 300 spent then are spent in the day that
        runs there, from 08:00 UTC, as much as in the UTC day."""
        ledger.open_account("u1", monthly_limit=1000, window_caps={"day": 300})
        ledger.deduct("u1", 300)

        ledger.set_time_zone("u1", "America/Los_Angeles")

        assert ledger.status("u1").windows == (
            WindowStatus("day", 300, 300, 0, datetime(2026, 1, 16, 8, tzinfo=UTC)),
        )
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)

    def test_a_week_cap_starts_again_on_monday(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """2026-01-15 is a Thursday; its week ends at midnight between Sunday 18 and Monday 19."""
        ledger.open_account("u1", monthly_limit=10_000, window_caps={"week": 500})
        ledger.deduct("u1", 500)

        clock.set(datetime(2026, 1, 18, 23, 59, tzinfo=UTC))
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)
        assert ledger.status("u1").windows == (
            WindowStatus("week", 500, 500, 0, datetime(2026, 1, 19, tzinfo=UTC)),
        )

        clock.set(datetime(2026, 1, 19, tzinfo=UTC))
        ledger.deduct("u1", 500)
        assert ledger.status("u1").windows[0].resets_at == datetime(2026, 1, 26, tzinfo=UTC)
        assert ledger.status("u1").monthly_used == 1000

    def test_a_week_counts_across_a_month_boundary(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """The week from Monday 2026-01-26 holds the month's reset on Sunday 1 February: the
        month starts again, the week goes on counting what it counted."""
        clock.set(datetime(2026, 1, 29, 12, tzinfo=UTC))
        ledger.open_account("u1", monthly_limit=1000, window_caps={"week": 500})
        ledger.deduct("u1", 400)

        clock.set(datetime(2026, 2, 1, 12, tzinfo=UTC))
        status = ledger.status("u1")
        assert (status.monthly_used, status.monthly_remaining, status.total_remaining) == (
            0,
            1000,
            100,
        )
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 101)
        ledger.deduct("u1", 100)
        clock.set(datetime(2026, 2, 2, tzinfo=UTC))
        assert windows(ledger, "u1") == [("week", 500, 0, 500)]
        assert ledger.status("u1").monthly_used == 100

    def test_of_several_windows_the_tightest_decides(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account(
            "u1", monthly_limit=10_000, window_caps={"week": 1000, "day": 150, "hour": 100}
        )
        ledger.deduct("u1", 100)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)  # the hour is full
        assert [(w.unit, w.resets_at) for w in ledger.status("u1").windows] == [
            ("hour", START + timedelta(hours=1)),
            ("day", JAN_16),
            ("week", datetime(2026, 1, 19, tzinfo=UTC)),
        ]
        assert windows(ledger, "u1") == [
            ("hour", 100, 100, 0),
            ("day", 150, 100, 50),
            ("week", 1000, 100, 900),
        ]

        clock.set(START + timedelta(hours=1))
        assert ledger.status("u1").total_remaining == 50
        ledger.deduct("u1", 50)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)  # the day is full
        assert windows(ledger, "u1") == [
            ("hour", 100, 50, 50),
            ("day", 150, 150, 0),
            ("week", 1000, 150, 850),
        ]

        clock.set(JAN_16)
        status = ledger.status("u1")
        assert (status.monthly_used, status.total_remaining) == (150, 100)
        assert windows(ledger, "u1") == [
            ("hour", 100, 0, 100),
            ("day", 150, 0, 150),
            ("week", 1000, 150, 850),
        ]
        assert refused(ledger, "u1") == [1, 1]
        assert ledger.reconcile() == []

    def test_holds_count_against_windows_while_held_and_commits_count_what_was_spent(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("u1", monthly_limit=1000, window_caps={"day": 300})

        hold = ledger.reserve("u1", 200)

        assert windows(ledger, "u1") == [("day", 300, 0, 100)]
        assert ledger.status("u1").total_remaining == 100
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 101)
        with pytest.raises(InsufficientTokens):
            ledger.reserve("u1", 101)
        ledger.deduct("u1", 100)
        assert windows(ledger, "u1") == [("day", 300, 100, 0)]

        ledger.commit(hold.id, 150)

        assert windows(ledger, "u1") == [("day", 300, 250, 50)]
        status = ledger.status("u1")
        assert (status.monthly_used, status.reserved, status.total_remaining) == (250, 0, 50)
        released = ledger.reserve("u1", 50)
        assert windows(ledger, "u1") == [("day", 300, 250, 0)]
        ledger.release(released.id)
        assert windows(ledger, "u1") == [("day", 300, 250, 50)]
        assert ledger.reconcile() == []

    def test_a_hold_committed_the_next_day_counts_in_that_day(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        clock.set(datetime(2026, 1, 15, 23, 55, tzinfo=UTC))
        ledger.open_account("u1", monthly_limit=1000, window_caps={"day": 300})
        ledger.deduct("u1", 250)
        hold = ledger.reserve("u1", 50, ttl=timedelta(minutes=30))
        assert windows(ledger, "u1") == [("day", 300, 250, 0)]

        clock.set(JAN_16 + timedelta(minutes=5))
        assert windows(ledger, "u1") == [("day", 300, 0, 250)]
        ledger.commit(hold.id, 30)

        assert windows(ledger, "u1") == [("day", 300, 30, 270)]
        assert ledger.status("u1").monthly_used == 280
        assert ledger.reconcile() == []

    def test_a_refund_gives_the_window_back_only_what_was_spent_in_it(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10_000, window_caps={"day": 300})
        yesterday = ledger.deduct("u1", 300).transaction
        assert yesterday.id is not None
        ledger.refund(yesterday.id, 100)
        assert windows(ledger, "u1") == [("day", 300, 200, 100)]
        ledger.deduct("u1", 100)

        clock.set(JAN_16 + timedelta(hours=9))
        today = ledger.deduct("u1", 300).transaction
        assert today.id is not None
        ledger.refund(yesterday.id)  # the 200 left of it: the month gets them, not the day

        assert windows(ledger, "u1") == [("day", 300, 300, 0)]
        assert ledger.status("u1").monthly_used == 400
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)
        ledger.refund(today.id, 50)
        assert windows(ledger, "u1") == [("day", 300, 250, 50)]
        assert ledger.status("u1").monthly_used == 350
        assert ledger.reconcile() == []

    def test_a_refund_of_what_was_spent_before_the_window_was_capped_gives_it_nothing(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=10_000)
        clock.set(datetime(2026, 1, 15, 9, tzinfo=UTC))
        uncapped = ledger.deduct("u1", 200).transaction
        assert uncapped.id is not None
        clock.set(datetime(2026, 1, 15, 10, tzinfo=UTC))
        ledger.set_window_caps("u1", {"day": 300})
        assert windows(ledger, "u1") == [("day", 300, 0, 300)]
        ledger.deduct("u1", 300)

        ledger.refund(uncapped.id)

        assert windows(ledger, "u1") == [("day", 300, 300, 0)]
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 1)

    def test_changing_the_caps_keeps_what_a_kept_window_used_and_none_clears_them(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("u1", monthly_limit=1000, window_caps={"day": 300})
        ledger.deduct("u1", 120)

        changed = ledger.set_window_caps("u1", {"day": 200, "hour": 1000})

        assert [(w.unit, w.cap, w.used) for w in changed.windows] == [
            ("hour", 1000, 0),
            ("day", 200, 120),
        ]
        assert windows(ledger, "u1") == [("hour", 1000, 0, 1000), ("day", 200, 120, 80)]
        change = ledger.history("u1", operation_type="limit_change")[0]
        assert change.operation_context == {
            "previous_limit": 1000,
            "previous_window_caps": {"day": 300},
            "window_caps": {"day": 200, "hour": 1000},
        }
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 81)
        ledger.deduct("u1", 80)
        assert windows(ledger, "u1") == [("hour", 1000, 80, 920), ("day", 200, 200, 0)]

        ledger.set_window_caps("u1", {"day": 100})  # below what the day used: nothing left
        ledger.set_window_caps("u1", {"day": 100})  # the same caps: nothing to record
        assert windows(ledger, "u1") == [("day", 100, 200, 0)]
        assert len(ledger.history("u1", operation_type="limit_change")) == 2

        cleared = ledger.set_window_caps("u1", None)

        assert cleared.windows == ()
        assert ledger.status("u1").windows == ()
        change = ledger.history("u1", operation_type="limit_change")[0]
        assert change.operation_context == {
            "previous_limit": 1000,
            "previous_window_caps": {"day": 100},
            "window_caps": {},
        }
        ledger.deduct("u1", 500)
        assert ledger.status("u1").total_remaining == 300
        assert ledger.set_window_caps("u1", {}).windows == ()
        assert len(ledger.history("u1", operation_type="limit_change")) == 3
        assert ledger.reconcile() == []

    def test_a_window_on_an_organisation_caps_what_its_members_spend_together(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("acme", monthly_limit=10_000, window_caps={"day": 500})
        ledger.open_account("ana", monthly_limit=10_000, organisation_id="acme")
        ledger.open_account("ben", monthly_limit=10_000, organisation_id="acme")
        ledger.deduct("ana", 300)
        ledger.deduct("ben", 200)

        with pytest.raises(InsufficientTokens) as refused_by:
            ledger.deduct("ben", 1)

        assert (refused_by.value.remaining, refused_by.value.refused_by) == (0, "acme")
        (refusal,) = ledger.history("ben", success=False)
        assert refusal.operation_context["refused_by"] == "acme"
        ben = ledger.status("ben")
        assert (ben.windows, ben.total_remaining, ben.organisation_remaining, ben.available) == (
            (),
            9800,
            0,
            0,
        )
        assert windows(ledger, "acme") == [("day", 500, 500, 0)]

        ana = ledger.history("ana", limit=1)[0]
        assert ana.id is not None
        ledger.refund(ana.id, 100)  # spent today: acme's day gets it back
        assert windows(ledger, "acme") == [("day", 500, 400, 100)]
        ledger.deduct("ben", 100)

        clock.set(JAN_16)
        assert ledger.status("ben").available == 500
        ledger.deduct("ben", 500)
        assert windows(ledger, "acme") == [("day", 500, 500, 0)]
        assert ledger.status("acme").monthly_used == 1000
        assert ledger.reconcile() == []

    def test_the_caps_an_account_opens_with_are_stored_in_unit_order(
        self, ledger: TokenLedger
    ) -> None:
        opened = ledger.open_account("u1", monthly_limit=1000, window_caps={"week": 9, "hour": 3})

        stored = ledger.get_account("u1").windows
        assert [(w.unit, w.cap, w.used) for w in opened.windows] == [("hour", 3, 0), ("week", 9, 0)]
        assert [(w.unit, w.cap, w.used) for w in stored] == [("hour", 3, 0), ("week", 9, 0)]
        assert ledger.open_account("u2", monthly_limit=10, window_caps={}).windows == ()
        with pytest.raises(AccountNotFound):
            ledger.set_window_caps("nobody", {"day": 5})

    def test_a_members_window_counts_nothing_its_organisation_refused(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("acme", monthly_limit=100, window_caps={"day": 80})
        ledger.open_account(
            "ana", monthly_limit=1000, organisation_id="acme", window_caps={"day": 300}
        )

        with pytest.raises(InsufficientTokens):
            ledger.deduct("ana", 81)  # fits ana's day, not acme's
        with pytest.raises(InsufficientTokens):
            ledger.reserve("ana", 81)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("ana", 301)  # fits neither; ana's own day refuses first

        assert windows(ledger, "ana") == [("day", 300, 0, 300)]
        assert windows(ledger, "acme") == [("day", 80, 0, 80)]
        assert ledger.history("acme") == []
        assert [e.operation_context.get("refused_by") for e in reversed(ledger.history("ana"))] == [
            "acme",
            "acme",
            None,
        ]
        ledger.deduct("ana", 80)
        assert windows(ledger, "ana") == [("day", 300, 80, 220)]
        assert ledger.status("ana").available == 0

    def test_an_expired_hold_gives_its_room_in_the_window_back(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        ledger.open_account("u1", monthly_limit=1000, window_caps={"day": 300})
        ledger.reserve("u1", 300, ttl=timedelta(minutes=5))
        assert windows(ledger, "u1") == [("day", 300, 0, 0)]

        clock.advance(timedelta(minutes=5))

        assert windows(ledger, "u1") == [("day", 300, 0, 300)]
        ledger.deduct("u1", 300)
        assert windows(ledger, "u1") == [("day", 300, 300, 0)]
        assert ledger.reconcile() == []

    @pytest.mark.parametrize("caps", [pytest.param(caps, id=name) for name, caps in BAD_CAPS])
    def test_bad_window_caps_are_refused_and_nothing_is_written(
        self, ledger: TokenLedger, caps: object
    ) -> None:
        ledger.open_account("u1", monthly_limit=1000, window_caps={"day": 300})
        before = ledger.get_account("u1")

        with pytest.raises(InvalidInput):
            ledger.open_account("u2", monthly_limit=1000, window_caps=caps)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            ledger.ensure_account("u2", monthly_limit=1000, window_caps=caps)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            ledger.set_window_caps("u1", caps)  # type: ignore[arg-type]

        assert ledger.get_account("u1") == before
        assert ledger.health().total_users == 1
        assert ledger.history(limit=1000) == []
