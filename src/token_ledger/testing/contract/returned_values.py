"""Nothing a call returns, and nothing a caller passed in, shares mutable state with the store."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from token_ledger import TokenLedger
from token_ledger.testing.contract.base import ContractBase


def stored_contexts(ledger: TokenLedger) -> list[dict[str, Any]]:
    return [entry.operation_context for entry in ledger.history("u1")]


class ReturnedValuesContract(ContractBase):
    """No returned value, and no value passed in, shares mutable state with the store."""

    @pytest.fixture
    def spent(self, ledger: TokenLedger) -> TokenLedger:
        ledger.open_account("u1", monthly_limit=50)
        ledger.deduct("u1", 5, context={"run": {"steps": [1, 2]}}, idempotency_key="k1")
        return ledger

    def test_editing_an_entry_history_returned_changes_nothing_stored(
        self, spent: TokenLedger
    ) -> None:
        entry = spent.history("u1")[0]

        entry.operation_context["run"]["steps"].append(3)
        entry.operation_context["added"] = True
        entry.to_dict()["operation_context"]["run"] = None

        assert stored_contexts(spent) == [{"run": {"steps": [1, 2]}}]

    def test_editing_the_entry_a_write_returned_changes_nothing_stored(
        self, spent: TokenLedger
    ) -> None:
        fresh = spent.deduct("u1", 1, context={"n": [1]})
        fresh.transaction.operation_context["n"].append(2)
        replayed = spent.deduct("u1", 5, idempotency_key="k1")
        replayed.transaction.operation_context["run"]["steps"].clear()

        assert stored_contexts(spent) == [{"n": [1]}, {"run": {"steps": [1, 2]}}]
        assert spent.deduct("u1", 5, idempotency_key="k1").transaction.operation_context == {
            "run": {"steps": [1, 2]}
        }

    def test_editing_the_context_passed_in_changes_nothing_stored(self, spent: TokenLedger) -> None:
        context: dict[str, Any] = {"tags": ["a"], "inner": {"x": 1}}
        spent.deduct("u1", 1, context=context)

        context["tags"].append("b")
        context["inner"]["x"] = 2
        context["later"] = True

        assert stored_contexts(spent)[0] == {"tags": ["a"], "inner": {"x": 1}}

    def test_accounts_statuses_and_reservations_are_frozen(self, spent: TokenLedger) -> None:
        spent.grant("u1", 10)
        hold = spent.reserve("u1", 2)
        account = spent.get_account("u1")

        for value, field in (
            (account, "monthly_tokens_used"),
            (account.grants[0], "remaining"),
            (spent.status("u1"), "monthly_used"),
            (hold, "amount"),
        ):
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(value, field, 0)
        assert isinstance(account.grants, tuple)
        assert isinstance(account.holds, tuple)

    def test_editing_a_returned_history_list_changes_nothing_stored(
        self, spent: TokenLedger
    ) -> None:
        page = spent.history("u1")
        page.clear()

        assert len(spent.history("u1")) == 1
