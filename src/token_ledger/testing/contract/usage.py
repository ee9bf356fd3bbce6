"""Usage reports: tokens spent net of refunds, grouped and ordered alike on every engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from token_ledger import (
    InsufficientTokens,
    InvalidInput,
    MonthlyResetPolicy,
    NaiveDatetime,
    TokenLedger,
    TokenLedgerError,
    UnknownTimeZone,
)
from token_ledger.repository import TokenRepository, UsageQuery
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase, LedgerFactory
from token_ledger.usage import UsageReport, UsageRow

UTC = timezone.utc
JAN_10 = datetime(2026, 1, 10, 12, tzinfo=UTC)


def figures(report: UsageReport) -> list[dict[str, Any]]:
    return report.to_dicts()


BAD_QUERIES: list[tuple[str, Callable[[TokenLedger], object], type[TokenLedgerError]]] = [
    ("unknown group", lambda ledger: ledger.usage(by="week"), InvalidInput),
    ("day and month", lambda ledger: ledger.usage(by=("day", "month")), InvalidInput),
    ("a group twice", lambda ledger: ledger.usage(by=("user", "user")), InvalidInput),
    ("groups not text", lambda ledger: ledger.usage(by=5), InvalidInput),  # type: ignore[arg-type]
    ("naive since", lambda ledger: ledger.usage(since=datetime(2026, 1, 1)), NaiveDatetime),
    (
        "until before since",
        lambda ledger: ledger.usage(since=JAN_10, until=JAN_10 - timedelta(days=1)),
        InvalidInput,
    ),
    ("empty range", lambda ledger: ledger.usage(since=JAN_10, until=JAN_10), InvalidInput),
    (
        "unknown zone",
        lambda ledger: ledger.usage(by="day", time_zone="Mars/Olympus"),
        UnknownTimeZone,
    ),
    ("empty user", lambda ledger: ledger.usage(user_id=""), InvalidInput),
    ("surrogate feature", lambda ledger: ledger.usage(feature="\ud800"), InvalidInput),
    (
        "past the range",
        lambda ledger: ledger.usage(since=datetime(1700, 1, 1, tzinfo=UTC)),
        InvalidInput,
    ),
]


class UsageContract(ContractBase):
    """``usage()``: what it counts, how it groups and orders, what it refuses."""

    @pytest.fixture
    def spent_in_january(self, ledger: TokenLedger, clock: MovableClock) -> TokenLedger:
        """Two users over three days of January (UTC): deductions, a commit, refunds, a
        refusal, a released hold and a grant, of which only spending and refunds count."""
        clock.set(JAN_10)
        ledger.open_account("a", monthly_limit=1000)
        ledger.open_account("b", monthly_limit=1000)
        chat = ledger.deduct("a", 10, feature="chat")
        ledger.deduct("a", 4, feature="search")
        ledger.deduct("b", 7, feature="chat")
        ledger.deduct("b", 1)  # no feature
        with pytest.raises(InsufficientTokens):
            ledger.deduct("b", 5_000, feature="chat")  # a refusal: not usage
        clock.set(JAN_10 + timedelta(days=1))
        hold = ledger.reserve("a", 50, feature="chat")
        ledger.commit(hold.id, 20)
        released = ledger.reserve("b", 5, feature="chat")
        ledger.release(released.id)  # nothing spent
        ledger.grant("a", 100)  # not usage
        assert chat.transaction.id is not None
        ledger.refund(chat.transaction.id, 3)  # counted on the 11th, when it was made
        clock.set(JAN_10 + timedelta(days=2))
        ledger.deduct("a", 2, feature="chat")
        return ledger

    def test_usage_nets_refunds_per_feature_and_day(self, spent_in_january: TokenLedger) -> None:
        report = spent_in_january.usage(by=("feature", "day"))

        assert figures(report) == [
            {"feature": None, "day": "2026-01-10", "tokens": 1, "spent": 1, "refunded": 0,
             "deductions": 1, "refunds": 0},
            {"feature": "chat", "day": "2026-01-10", "tokens": 17, "spent": 17, "refunded": 0,
             "deductions": 2, "refunds": 0},
            {"feature": "search", "day": "2026-01-10", "tokens": 4, "spent": 4, "refunded": 0,
             "deductions": 1, "refunds": 0},
            {"feature": "chat", "day": "2026-01-11", "tokens": 17, "spent": 20, "refunded": 3,
             "deductions": 1, "refunds": 1},
            {"feature": "chat", "day": "2026-01-12", "tokens": 2, "spent": 2, "refunded": 0,
             "deductions": 1, "refunds": 0},
        ]  # fmt: skip
        assert report.total == 41
        assert report.by == ("feature", "day")

    def test_usage_without_groups_is_one_total_and_of_nothing_is_empty(
        self, spent_in_january: TokenLedger
    ) -> None:
        assert figures(spent_in_january.usage()) == [
            {"tokens": 41, "spent": 44, "refunded": 3, "deductions": 6, "refunds": 1}
        ]
        assert spent_in_january.usage(since=datetime(2026, 2, 1, tzinfo=UTC)) == []
        assert spent_in_january.usage(user_id="nobody", by="day") == []

    def test_usage_per_user_with_filters(self, spent_in_january: TokenLedger) -> None:
        """``since`` inclusive, ``until`` exclusive; ``user_id`` and ``feature`` filter."""
        window = spent_in_january.usage(
            by="user", since=JAN_10 + timedelta(days=1), until=JAN_10 + timedelta(days=2)
        )
        chat = spent_in_january.usage(by=("user", "feature"), feature="chat")
        of_b = spent_in_january.usage(by=("user", "month"), user_id="b")

        assert [(r.user_id, r.tokens, r.deductions, r.refunds) for r in window] == [("a", 17, 1, 1)]
        assert [(r.user_id, r.feature, r.tokens) for r in chat] == [
            ("a", "chat", 29),
            ("b", "chat", 7),
        ]
        assert of_b == [UsageRow(user_id="b", month=date(2026, 1, 1), spent=8, deductions=2)]

    def test_usage_days_are_local_to_the_policy_zone_or_the_one_asked(
        self, make_ledger: LedgerFactory, clock: MovableClock
    ) -> None:
        """Asia/Kathmandu is UTC+05:45: 18:14 UTC is the same local day, 18:15 the next."""
        ledger = make_ledger(MonthlyResetPolicy(timezone="Asia/Kathmandu"))
        clock.set(datetime(2026, 1, 31, 18, 14, 59, 999999, tzinfo=UTC))
        ledger.open_account("a", monthly_limit=1000)
        ledger.deduct("a", 1)
        clock.set(datetime(2026, 1, 31, 18, 15, tzinfo=UTC))
        ledger.deduct("a", 2)

        local = ledger.usage(by="day")
        months = ledger.usage(by="month")
        in_utc = ledger.usage(by="day", time_zone="UTC")

        assert [(r.day, r.tokens) for r in local] == [(date(2026, 1, 31), 1), (date(2026, 2, 1), 2)]
        assert [(r.month, r.tokens) for r in months] == [
            (date(2026, 1, 1), 1),
            (date(2026, 2, 1), 2),
        ]
        assert [(r.day, r.tokens) for r in in_utc] == [(date(2026, 1, 31), 3)]

    def test_usage_days_follow_daylight_saving_time(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """New York's 2026-03-08 has 23 hours (EST, then EDT): 04:59 UTC is the 7th, 05:00 the
        8th, 03:59 UTC on the 9th still the 8th, 04:00 the 9th."""
        clock.set(datetime(2026, 3, 1, tzinfo=UTC))
        ledger.open_account("a", monthly_limit=1000)
        for instant, tokens in (
            (datetime(2026, 3, 8, 4, 59, tzinfo=UTC), 1),
            (datetime(2026, 3, 8, 5, 0, tzinfo=UTC), 2),
            (datetime(2026, 3, 9, 3, 59, tzinfo=UTC), 4),
            (datetime(2026, 3, 9, 4, 0, tzinfo=UTC), 8),
        ):
            clock.set(instant)
            ledger.deduct("a", tokens)

        report = ledger.usage(by="day", time_zone="America/New_York")

        assert [(r.day, r.tokens) for r in report] == [
            (date(2026, 3, 7), 1),
            (date(2026, 3, 8), 6),
            (date(2026, 3, 9), 8),
        ]

    def test_usage_days_of_a_zone_whose_offset_is_no_quarter_hour(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Liberia kept UTC-00:44:30 until 1972: its midnight is no UTC quarter-hour.

        (A zone both PostgreSQL's and Python's time zone databases agree on: for some zones,
        Europe/Amsterdam among them, their history before 1970 differs.)
        """
        clock.set(datetime(1960, 6, 1, tzinfo=UTC))
        ledger.open_account("a", monthly_limit=1000)
        for instant, tokens in (
            (datetime(1960, 6, 10, 0, 44, 29, tzinfo=UTC), 1),  # 23:59:59 local
            (datetime(1960, 6, 10, 0, 44, 30, tzinfo=UTC), 2),  # 00:00:00 local
        ):
            clock.set(instant)
            ledger.deduct("a", tokens)

        report = ledger.usage(by="day", time_zone="Africa/Monrovia")

        assert [(r.day, r.tokens) for r in report] == [
            (date(1960, 6, 9), 1),
            (date(1960, 6, 10), 2),
        ]

    def test_usage_rows_are_ordered_by_day_user_and_feature_by_code_point(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Whatever the database's collation: ``"B" < "a" < "é"``, no feature first."""
        clock.set(JAN_10)
        for user in ("é", "a", "B"):
            ledger.open_account(user, monthly_limit=1000)
        clock.set(JAN_10 + timedelta(days=1))
        ledger.deduct("é", 1, feature="z")
        ledger.deduct("a", 1, feature="Z")
        clock.set(JAN_10)
        for user in ("é", "a", "B"):
            for feature in ("é", "b", None, "A"):
                ledger.deduct(user, 1, feature=feature)

        report = ledger.usage(by=("user", "feature", "day"))

        expected = [
            (JAN_10.date(), user, feature)
            for user in ("B", "a", "é")
            for feature in (None, "A", "b", "é")
        ] + [(date(2026, 1, 11), "a", "Z"), (date(2026, 1, 11), "é", "z")]
        assert [(r.day, r.user_id, r.feature) for r in report] == expected

    def test_usage_adds_up_past_the_largest_bigint(
        self, ledger: TokenLedger, clock: MovableClock
    ) -> None:
        """Two deductions of 2^63 - 1 add up to more than any database integer holds."""
        clock.set(JAN_10)
        biggest = 2**63 - 1
        for user in ("a", "b"):
            ledger.open_account(user, monthly_limit=biggest)
            ledger.deduct(user, biggest, feature="bulk")

        assert [(r.feature, r.tokens) for r in ledger.usage(by=("feature", "day"))] == [
            ("bulk", 2 * biggest)
        ]

    @pytest.mark.parametrize(
        ("call", "error"),
        [pytest.param(call, error, id=name) for name, call, error in BAD_QUERIES],
    )
    def test_usage_refuses_bad_input_with_its_typed_error(
        self,
        spent_in_january: TokenLedger,
        call: Callable[[TokenLedger], object],
        error: type[TokenLedgerError],
    ) -> None:
        with pytest.raises(error):
            call(spent_in_january)

    def test_the_port_answers_a_usage_query_with_ordered_rows(
        self, repository: TokenRepository, spent_in_january: TokenLedger
    ) -> None:
        rows = repository.usage(UsageQuery(by=("user", "day"), until=JAN_10 + timedelta(days=1)))

        assert rows == [
            UsageRow(user_id="a", day=JAN_10.date(), spent=14, deductions=2),
            UsageRow(user_id="b", day=JAN_10.date(), spent=8, deductions=2),
        ]
