"""Refused input raises its typed error and changes nothing, on every engine."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from token_ledger import (
    InvalidAmount,
    InvalidInput,
    NaiveDatetime,
    TokenLedger,
    TokenLedgerError,
)
from token_ledger.testing.contract.base import ContractBase

BAD_AMOUNTS = [0, -1, True, 1.0, math.nan, "5", None, 2**63]


def snapshot(ledger: TokenLedger) -> tuple[object, ...]:
    return (ledger.get_account("u1"), tuple(ledger.history(limit=1000)))


BAD_CALLS: list[tuple[str, Callable[[TokenLedger], object], type[TokenLedgerError]]] = [
    ("empty user", lambda ledger: ledger.deduct("", 1), InvalidInput),
    ("non-string user", lambda ledger: ledger.deduct(7, 1), InvalidInput),  # type: ignore[arg-type]
    ("huge user", lambda ledger: ledger.deduct("x" * 256, 1), InvalidInput),
    ("list context", lambda ledger: ledger.deduct("u1", 1, context=[1]), InvalidInput),  # type: ignore[arg-type]
    ("nan context", lambda ledger: ledger.deduct("u1", 1, context={"x": math.nan}), InvalidInput),
    (
        "object context",
        lambda ledger: ledger.deduct("u1", 1, context={"x": object()}),
        InvalidInput,
    ),
    ("empty key", lambda ledger: ledger.deduct("u1", 1, idempotency_key=""), InvalidInput),
    ("empty feature", lambda ledger: ledger.deduct("u1", 1, feature=""), InvalidInput),
    (
        "naive anchor",
        lambda ledger: ledger.open_account("u2", 5, reset_anchor=datetime(2026, 1, 1)),
        NaiveDatetime,
    ),
    ("naive since", lambda ledger: ledger.history(since=datetime(2026, 1, 1)), NaiveDatetime),
    ("unknown operation", lambda ledger: ledger.history(operation_type="steal"), InvalidInput),
    ("zero page", lambda ledger: ledger.history(limit=0), InvalidAmount),
    ("zero batch", lambda ledger: ledger.reset_all_stale(batch_size=0), InvalidAmount),
]


class BadInputContract(ContractBase):
    """Refused input raises its typed error and changes nothing."""

    @pytest.fixture
    def opened(self, ledger: TokenLedger) -> TokenLedger:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 5)
        return ledger

    @pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
    def test_bad_amounts_are_refused(self, opened: TokenLedger, amount: Any) -> None:
        before = snapshot(opened)

        with pytest.raises(InvalidAmount):
            opened.deduct("u1", amount)

        assert snapshot(opened) == before

    @pytest.mark.parametrize("limit", BAD_AMOUNTS, ids=repr)
    def test_bad_limits_are_refused(self, opened: TokenLedger, limit: Any) -> None:
        before = snapshot(opened)

        with pytest.raises(InvalidAmount):
            opened.set_limit("u1", limit)
        with pytest.raises(InvalidAmount):
            opened.open_account("u2", monthly_limit=limit)

        assert snapshot(opened) == before
        assert opened.history("u2") == []

    @pytest.mark.parametrize(("name", "call", "error"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
    def test_bad_arguments_are_refused(
        self,
        opened: TokenLedger,
        name: str,
        call: Callable[[TokenLedger], object],
        error: type[TokenLedgerError],
    ) -> None:
        before = snapshot(opened)

        with pytest.raises(error):
            call(opened)

        assert snapshot(opened) == before

    def test_input_errors_are_also_value_errors(self) -> None:
        assert issubclass(InvalidAmount, ValueError)
        assert issubclass(NaiveDatetime, ValueError)
