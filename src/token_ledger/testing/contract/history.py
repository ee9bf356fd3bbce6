"""Reading the ledger back: filters, order and keyset paging, on every engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from token_ledger import InsufficientTokens, TokenLedger, Transaction
from token_ledger.testing import MovableClock
from token_ledger.testing.contract.base import ContractBase

UTC = timezone.utc


class HistoryContract(ContractBase):
    """Reading the ledger back through the facade: filters, order and keyset paging."""

    @pytest.fixture
    def busy_ledger(self, ledger: TokenLedger, clock: MovableClock) -> TokenLedger:
        ledger.open_account("a", monthly_limit=100)
        ledger.open_account("b", monthly_limit=5)
        for day in range(10):
            clock.set(datetime(2026, 1, 10 + day, tzinfo=UTC))
            ledger.deduct("a", 1, feature="chat" if day % 2 else "search")
        with pytest.raises(InsufficientTokens):
            ledger.deduct("b", 6, feature="chat")
        return ledger

    def test_history_is_newest_first(self, busy_ledger: TokenLedger) -> None:
        entries = busy_ledger.history(limit=1000)

        ids: list[Any] = [entry.id for entry in entries]
        assert len(entries) == 11
        assert ids == sorted(ids, reverse=True)
        assert entries[0].user_id == "b"

    def test_history_filters_combine(self, busy_ledger: TokenLedger) -> None:
        chat_for_a = busy_ledger.history("a", feature="chat", operation_type="deduct", success=True)
        window = busy_ledger.history(
            "a", since=datetime(2026, 1, 12, tzinfo=UTC), until=datetime(2026, 1, 15, tzinfo=UTC)
        )

        assert len(chat_for_a) == 5
        assert all(e.feature == "chat" and e.user_id == "a" for e in chat_for_a)
        assert [e.created_at.day for e in window] == [14, 13, 12]
        assert [e.user_id for e in busy_ledger.history(success=False)] == ["b"]

    def test_keyset_paging_visits_every_entry_once(self, busy_ledger: TokenLedger) -> None:
        seen: list[Transaction] = []
        page = busy_ledger.history("a", limit=3)
        while page and len(seen) <= 100:  # an engine that ignores before_id fails, not hangs
            seen.extend(page)
            page = busy_ledger.history("a", limit=3, before_id=page[-1].id)

        assert len(seen) == 10
        assert len({entry.id for entry in seen}) == 10
        assert seen == busy_ledger.history("a", limit=100)

    def test_history_of_a_quiet_user_is_empty(
        self, busy_ledger: TokenLedger, clock: MovableClock
    ) -> None:
        clock.advance(timedelta(days=1))
        busy_ledger.open_account("quiet", monthly_limit=1)

        assert busy_ledger.history("quiet") == []
