"""Every public call refuses hostile input with one exception class on every engine,
and writes nothing.

Each case names a method, one argument and one bad value; the other arguments
are valid. The cases share one prepared ledger per engine: a refusal changes
nothing, which is exactly what each case checks against the snapshot taken
just before it, so a case that did write would fail itself and no other.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from token_ledger import (
    AccountNotFound,
    InvalidAmount,
    InvalidInput,
    MonthlyResetPolicy,
    NaiveDatetime,
    Threshold,
    TokenLedger,
    UnknownTimeZone,
)
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import START, ContractBase

LATE_IN_TIME = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5)))
EARLY_IN_TIME = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5)))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@attrs.frozen
class Prepared:
    """A ledger with an account, a deduction to refund and a hold to commit or release."""

    ledger: TokenLedger
    spent: int
    hold: str
    grant: str = "g"

    def snapshot(self) -> tuple[object, ...]:
        ledger = self.ledger
        return (
            ledger.get_account("u1"),
            ledger.status("u1"),
            tuple(ledger.history(limit=1000)),
            tuple(ledger.reconcile()),
            ledger.health().total_users,
            tuple(ledger.notifications(limit=1000)),
            ledger.notification_cursor("c"),
        )


# valid arguments of every public call; each case replaces one of them
VALID: dict[str, Callable[[Prepared], dict[str, Any]]] = {
    "open_account": lambda p: {
        "user_id": "u2",
        "monthly_limit": 5,
        "reset_anchor": None,
        "time_zone": None,
        "rollover_cap": None,
        "organisation_id": None,
        "window_caps": None,
    },
    "ensure_account": lambda p: {
        "user_id": "u2",
        "monthly_limit": 5,
        "reset_anchor": None,
        "time_zone": None,
        "rollover_cap": None,
        "organisation_id": None,
        "window_caps": None,
    },
    "get_account": lambda p: {"user_id": "u1"},
    "status": lambda p: {"user_id": "u1"},
    "deduct": lambda p: {
        "user_id": "u1",
        "amount": 1,
        "feature": None,
        "context": None,
        "idempotency_key": None,
    },
    "set_limit": lambda p: {
        "user_id": "u1",
        "monthly_limit": 60,
        "overage_limit": None,
        "rollover_cap": None,
    },
    "set_time_zone": lambda p: {"user_id": "u1", "time_zone": "Europe/Berlin"},
    "move_to_organisation": lambda p: {"user_id": "u1", "organisation_id": None},
    "set_window_caps": lambda p: {"user_id": "u1", "window_caps": {"day": 40}},
    "grant": lambda p: {
        "user_id": "u1",
        "amount": 1,
        "expires_at": None,
        "reason": None,
        "idempotency_key": None,
        "priority": 0,
    },
    "void_grant": lambda p: {"grant_id": p.grant, "reason": None, "idempotency_key": None},
    "reserve": lambda p: {
        "user_id": "u1",
        "amount": 1,
        "ttl": timedelta(minutes=5),
        "feature": None,
        "idempotency_key": None,
    },
    "commit": lambda p: {"reservation_id": p.hold, "actual_amount": 1},
    "release": lambda p: {"reservation_id": p.hold},
    "refund": lambda p: {
        "transaction_id": p.spent,
        "amount": 1,
        "reason": None,
        "idempotency_key": None,
    },
    "reset_if_needed": lambda p: {"user_id": "u1"},
    "reset_all_stale": lambda p: {"batch_size": 10, "progress": None},
    "alerts": lambda p: {
        "stale_after": timedelta(days=1),
        "stale_threshold": 0,
        "failed_window": timedelta(hours=1),
        "failed_threshold": 10,
        "usage_ratio": 0.9,
        "high_usage_threshold": None,
    },
    "reconcile": lambda p: {"user_id": "u1"},
    "history": lambda p: {
        "user_id": None,
        "operation_type": None,
        "feature": None,
        "success": None,
        "since": None,
        "until": None,
        "before_id": None,
        "reference": None,
        "limit": 100,
    },
    "set_thresholds": lambda p: {"user_id": "u1", "thresholds": [Threshold(80)]},
    "notifications": lambda p: {"after": 0, "limit": 100},
    "notification_cursor": lambda p: {"consumer": "c"},
    "acknowledge_notifications": lambda p: {"consumer": "c", "up_to": 0},
    "usage": lambda p: {
        "since": None,
        "until": None,
        "by": ("user", "feature", "day"),
        "user_id": None,
        "feature": None,
        "time_zone": None,
        "organisation": None,
    },
}

BAD_TEXT = ["", "   ", 7, b"u1", ["u1"], "x" * 256, "a\x00b", "\ud800", "u\udfff1"]
BAD_AMOUNTS = [0, -1, True, 1.0, math.nan, "5", 2**63]
BAD_COUNTS = [-1, True, 1.0, "5", 2**63]  # where 0 is allowed
BAD_INSTANTS: list[tuple[object, type[Exception]]] = [
    (datetime(2026, 3, 1), NaiveDatetime),
    (LATE_IN_TIME, InvalidInput),
    (EARLY_IN_TIME, InvalidInput),
    (datetime(9500, 1, 1, tzinfo=timezone.utc), InvalidInput),
    (datetime(1700, 1, 1, tzinfo=timezone.utc), InvalidInput),
    ("2026-03-01T00:00:00+00:00", InvalidInput),
    (0, InvalidInput),
]
BAD_CONTEXTS = [
    [1],
    "text",
    {"x": math.nan},
    {"x": math.inf},
    {"x": object()},
    {"x": {1, 2}},
    {1: "one"},
    {"\ud800": 1},
    {"k": "\ud800"},
    {"k": ["ok", {"deeper": "\udc00"}]},
    {"k": "a\x00b"},
    {"a\x00": 1},
    nested(10_000),
    nested(33),
    {"k": 10**301},
    {"k": "x" * 70_000},
    {"k": list(range(10_001))},
]
BAD_DURATIONS = [timedelta(0), timedelta(seconds=-1), 60, None, "15m", timedelta.max]
BAD_WINDOWS = [timedelta(seconds=-1), 60, None, "1d"]
BAD_RATIOS = [math.nan, -0.1, 1.5, True, "0.9", None]
BAD_FLAGS = ["yes", 1, 0, "false", [True]]
BAD_OPERATION_TYPES = ["steal", "", 5, ["deduct"]]
BAD_THRESHOLDS = ["80%", [80], 80, [Threshold(80), None], b"80", Threshold(80)]
BAD_GROUPS = ["week", "", ("day", "month"), ("user", "user"), 5, None, [["user"]], b"user"]

BAD_ZONES = ["", "Mars/Olympus", "utc", "../etc/passwd", "/etc/localtime", "a\x00b", "\ud800", 5]
BAD_WINDOW_CAPS: list[tuple[object, type[Exception]]] = [
    ({"month": 5}, InvalidInput),
    ({"Day": 5}, InvalidInput),
    ({5: 5}, InvalidInput),
    (["day"], InvalidInput),
    ("day=5", InvalidInput),
    ({"day": 0}, InvalidAmount),
    ({"day": -1}, InvalidAmount),
    ({"day": "5"}, InvalidAmount),
    ({"day": True}, InvalidAmount),
    ({"day": 1.0}, InvalidAmount),
    ({"day": None}, InvalidAmount),
    ({"day": 2**63}, InvalidAmount),
]
BAD_PRIORITIES = [True, 1.0, "1", None, 2**31, -(2**31) - 1]

ID_ARGUMENTS = ("user_id", "reservation_id", "grant_id", "consumer")
OPTIONAL_ID_ARGUMENTS = (
    "feature",
    "idempotency_key",
    "reference",
    "organisation_id",
    "organisation",
)


def _cases() -> Iterator[tuple[str, str, object, type[Exception]]]:
    for method, valid in VALID.items():
        for argument in valid(Prepared(None, 0, "h")):  # type: ignore[arg-type]
            optional_user = method in ("history", "reconcile", "usage")
            if argument in ID_ARGUMENTS:
                bad: list[tuple[object, type[Exception]]] = [(v, InvalidInput) for v in BAD_TEXT]
                if not optional_user:
                    bad.append((None, InvalidInput))
            elif argument in OPTIONAL_ID_ARGUMENTS:
                bad = [(v, InvalidInput) for v in BAD_TEXT]
            elif argument == "reason":
                bad = [(v, InvalidInput) for v in (5, "x" * 1001, "a\x00", "\ud800", b"why")]
            elif argument in ("amount", "batch_size", "transaction_id", "before_id"):
                bad = [(v, InvalidAmount) for v in BAD_AMOUNTS]
                none_allowed = argument == "before_id" or (method, argument) == ("refund", "amount")
                if not none_allowed:
                    bad.append((None, InvalidAmount))
            elif argument == "monthly_limit":
                bad = [(v, InvalidAmount) for v in BAD_AMOUNTS]
                if method != "set_limit":
                    bad.append((None, InvalidAmount))
            elif argument in (
                "overage_limit",
                "actual_amount",
                "stale_threshold",
                "failed_threshold",
                "high_usage_threshold",
                "after",
                "up_to",
            ):
                bad = [(v, InvalidAmount) for v in BAD_COUNTS]
                if argument in (
                    "actual_amount",
                    "stale_threshold",
                    "failed_threshold",
                    "after",
                    "up_to",
                ):
                    bad.append((None, InvalidAmount))
            elif argument == "thresholds":
                bad = [(v, InvalidInput) for v in BAD_THRESHOLDS]
            elif argument in ("reset_anchor", "expires_at", "since", "until"):
                bad = list(BAD_INSTANTS)
                if argument == "expires_at":
                    bad.append((START - timedelta(days=1), InvalidInput))
            elif argument == "time_zone":
                bad = [(v, UnknownTimeZone) for v in BAD_ZONES]
            elif argument == "priority":
                bad = [(v, InvalidAmount) for v in BAD_PRIORITIES]
            elif argument == "rollover_cap":
                bad = [(v, InvalidAmount) for v in BAD_COUNTS]
            elif argument == "context":
                bad = [(v, InvalidInput) for v in BAD_CONTEXTS]
            elif argument == "ttl":
                bad = [(v, InvalidInput) for v in BAD_DURATIONS]
            elif argument in ("stale_after", "failed_window"):
                bad = [(v, InvalidInput) for v in BAD_WINDOWS]
            elif argument == "usage_ratio":
                bad = [(v, InvalidInput) for v in BAD_RATIOS]
            elif argument == "success":
                bad = [(v, InvalidInput) for v in BAD_FLAGS]
            elif argument == "operation_type":
                bad = [(v, InvalidInput) for v in BAD_OPERATION_TYPES]
            elif argument == "limit":
                bad = [(0, InvalidAmount), (True, InvalidAmount), (1.5, InvalidAmount)]
                bad += [(None, InvalidAmount), (10_001, InvalidInput)]
            elif argument == "progress":
                bad = [(5, InvalidInput), ("print", InvalidInput)]
            elif argument == "by":
                bad = [(v, InvalidInput) for v in BAD_GROUPS]
            elif argument == "window_caps":
                bad = list(BAD_WINDOW_CAPS)
            else:  # pragma: no cover - a new argument needs its bad values here
                raise AssertionError(f"no bad values for {method}({argument}=...)")
            for value, error in bad:
                yield method, argument, value, error


def _case_id(method: str, argument: str, value: object) -> str:
    return f"{method}-{argument}-{reprlib.repr(value)}"


CASES = list(_cases())

BIG = 2**63 - 1


class HostileInputContract(ContractBase):
    """Every public call refuses hostile input with one exception class and writes nothing."""

    @pytest.fixture(scope="class")
    @classmethod
    def prepared(
        cls, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Prepared]:
        """One prepared ledger per engine, shared by the cases of the class."""
        contract = cls()
        contract.request = request
        repository = contract.create_repository(tmp_path_factory.mktemp("hostile"))
        contract.adopt_policy(repository, MonthlyResetPolicy())
        ledger = TokenLedger(repository, clock=MovableClock(START))
        ledger.open_account("u1", monthly_limit=50)
        spent = ledger.deduct("u1", 5, feature="chat", context={"a": 1}).transaction.id
        assert spent is not None
        ledger.grant("u1", 10, reason="promo")
        granted = ledger.grant("u1", 4, reason="to void").reference
        assert granted is not None
        hold = ledger.reserve("u1", 3).id
        yield Prepared(ledger, spent, hold, granted)
        repository.close()

    # Ids on each ``pytest.param``, not ``ids=``: pytest keeps the ids it made from ``ids=`` on
    # the mark and escapes them again for the next class, so ``'a\\x00b'`` would show as
    # ``'a\\\\x00b'`` in every engine's ids but the first.
    @pytest.mark.parametrize(
        ("method", "argument", "value", "error"),
        [pytest.param(m, a, v, e, id=_case_id(m, a, v)) for m, a, v, e in CASES],
    )
    def test_refused_with_the_same_error_and_nothing_written(
        self, prepared: Prepared, method: str, argument: str, value: object, error: type[Exception]
    ) -> None:
        arguments = {**VALID[method](prepared), argument: value}
        before = prepared.snapshot()

        with pytest.raises(Exception) as raised:  # noqa: PT011 - the exact class is asserted
            getattr(prepared.ledger, method)(**arguments)

        assert type(raised.value) is error, raised.value
        assert prepared.snapshot() == before
        with pytest.raises(AccountNotFound):
            prepared.ledger.get_account("u2")

    def test_every_public_call_has_cases(self) -> None:
        """A new public method of ``TokenLedger`` needs its hostile cases above."""
        public = {
            name
            for name in dir(TokenLedger)
            if not name.startswith("_") and callable(getattr(TokenLedger, name))
        }
        without_arguments = {"health", "now", "close"}
        # ``within`` takes a connection, not ledger values: refusals of connections it does not
        # support are the caller-transaction tests' (tests/within_transaction/).
        constructors = {"memory", "sqlite", "postgres", "open", "within"}
        assert public - without_arguments - constructors == set(VALID)

    def test_windows_longer_than_time_mean_since_the_beginning(self, prepared: Prepared) -> None:
        report = prepared.ledger.alerts(stale_after=timedelta.max, failed_window=timedelta.max)

        assert report.stale_resets.value == 0
        assert report.failed_transactions.value == 0

    # totals past 2^63 - 1

    def test_a_grant_that_would_carry_the_grant_balance_past_int64_is_refused(
        self,
        prepared: Prepared,
    ) -> None:
        before = prepared.snapshot()

        with pytest.raises(InvalidAmount):
            prepared.ledger.grant("u1", BIG)

        assert prepared.snapshot() == before

    def test_usage_past_int64_within_limit_and_overage_is_refused(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("big", monthly_limit=BIG)
        ledger.set_limit("big", overage_limit=BIG)
        ledger.deduct("big", BIG)
        before = (ledger.status("big"), tuple(ledger.history("big")))

        with pytest.raises(InvalidAmount):
            ledger.deduct("big", 1)

        assert (ledger.status("big"), tuple(ledger.history("big"))) == before
        assert ledger.reconcile() == []

    def test_holds_past_int64_are_refused(self, ledger: TokenLedger) -> None:
        ledger.open_account("big", monthly_limit=BIG)
        ledger.set_limit("big", overage_limit=BIG)
        ledger.reserve("big", BIG)
        before = (ledger.status("big"), tuple(ledger.history("big")))

        with pytest.raises(InvalidAmount):
            ledger.reserve("big", 1)

        assert (ledger.status("big"), tuple(ledger.history("big"))) == before
        assert ledger.reconcile() == []
