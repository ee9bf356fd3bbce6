"""Deductions, refusals and idempotent retries, on every engine."""

from __future__ import annotations

import threading
from datetime import timezone

import pytest

from token_ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    OperationType,
    TokenLedger,
)
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc


class DeductContract(ContractBase):
    """Deductions, refusals and idempotent retries."""

    def test_deduct_spends_and_records_one_entry(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=50)

        result = ledger.deduct("u1", 1, feature="literature_search", context={"test": True})

        assert result.to_dict() == {"success": True, "monthlyRemaining": 49}
        entry = result.transaction
        assert entry.id is not None
        assert (entry.operation_type, entry.amount, entry.feature) == (
            OperationType.DEDUCT,
            1,
            "literature_search",
        )
        assert entry.operation_context == {"test": True}
        assert entry.success
        assert entry.balance_after == 49
        assert ledger.history("u1") == [entry]

    def test_spending_exactly_the_limit_is_allowed(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)

        assert ledger.deduct("u1", 10).monthly_remaining == 0

    def test_overspend_raises_records_a_failed_entry_and_keeps_usage(
        self, ledger: TokenLedger
    ) -> None:
        ledger.open_account("u1", monthly_limit=10)
        ledger.deduct("u1", 7)

        with pytest.raises(InsufficientTokens) as raised:
            ledger.deduct("u1", 4, feature="chat")

        assert (raised.value.requested, raised.value.remaining) == (4, 3)
        assert ledger.status("u1").monthly_used == 7
        failed = ledger.history("u1", success=False)
        assert [(e.amount, e.feature, e.balance_after) for e in failed] == [(4, "chat", 3)]

    def test_deduct_from_a_missing_account_writes_nothing(self, ledger: TokenLedger) -> None:
        with pytest.raises(AccountNotFound):
            ledger.deduct("ghost", 1)

        assert ledger.history() == []

    def test_context_round_trips_as_json(self, ledger: TokenLedger) -> None:
        ledger.open_account("u1", monthly_limit=10)
        context = {"nested": {"list": (1, 2.5, None, "é")}, "flag": False, "n": 2**70}

        ledger.deduct("u1", 1, context=context)

        stored = ledger.history("u1")[0].operation_context
        assert stored == {"nested": {"list": [1, 2.5, None, "é"]}, "flag": False, "n": 2**70}

    def test_retry_with_the_same_key_returns_the_original_and_writes_nothing(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        first = ledger.deduct("u1", 5, feature="chat", idempotency_key="req-1")

        retry = ledger.deduct("u1", 5, feature="chat", idempotency_key="req-1")

        assert retry == first
        assert ledger.status("u1").monthly_used == 5
        assert len(ledger.history("u1")) == 1

    def test_retry_of_a_refused_deduction_is_refused_again_without_a_second_entry(
        self,
        ledger: TokenLedger,
    ) -> None:
        ledger.open_account("u1", monthly_limit=3)
        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 5, idempotency_key="req-1")
        ledger.set_limit("u1", 100)

        with pytest.raises(InsufficientTokens):
            ledger.deduct("u1", 5, idempotency_key="req-1")

        assert len(ledger.history("u1", operation_type="deduct")) == 1

    @pytest.mark.parametrize(
        ("user_id", "amount", "feature"),
        [("u2", 5, "chat"), ("u1", 6, "chat"), ("u1", 5, "search")],
        ids=["other-user", "other-amount", "other-feature"],
    )
    def test_reusing_a_key_for_a_different_deduction_conflicts(
        self, ledger: TokenLedger, user_id: str, amount: int, feature: str
    ) -> None:
        ledger.open_account("u1", monthly_limit=50)
        ledger.open_account("u2", monthly_limit=50)
        ledger.deduct("u1", 5, feature="chat", idempotency_key="req-1")

        with pytest.raises(IdempotencyConflict):
            ledger.deduct(user_id, amount, feature=feature, idempotency_key="req-1")

        assert ledger.status("u2").monthly_used == 0
        assert len(ledger.history()) == 1

    def test_threads_sharing_one_ledger_never_overspend(self, ledger: TokenLedger) -> None:
        """Eight threads ask for 3x the limit between them; exactly the limit is spent."""
        ledger.open_account("hot", monthly_limit=240)
        errors: list[BaseException] = []

        def spend() -> None:
            for _ in range(30):
                try:
                    ledger.deduct("hot", 3)
                except InsufficientTokens:
                    pass
                except BaseException as error:  # pragma: no cover - reported below
                    errors.append(error)

        threads = [threading.Thread(target=spend) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        successes = ledger.history("hot", success=True, limit=1000)
        assert ledger.status("hot").monthly_used == 240
        assert sum(entry.amount for entry in successes) == 240
