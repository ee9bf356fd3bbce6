"""Organisation links an operator wrote by hand in the sqlite3 shell, which enforces no
foreign key: the ledger refuses to spend on a path it cannot trust, and says why."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from token_ledger import LedgerInvariantError, TokenLedger, TransientStorageError


def opened(path: Path) -> None:
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("acme", monthly_limit=100)
        ledger.open_account("m", monthly_limit=50, organisation_id="acme")


def by_hand(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(statement)
    conn.close()


def test_a_member_of_a_missing_organisation_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    opened(path)
    by_hand(path, "UPDATE user_tokens SET organisation_id = 'ghost' WHERE user_id = 'm'")

    with TokenLedger.sqlite(path) as ledger:
        with pytest.raises(TransientStorageError, match=r"'ghost'.*does not exist"):
            ledger.deduct("m", 1)
        assert not ledger.history(operation_type="deduct")
        assert ledger.status("m").monthly_used == 0


def test_a_cycle_written_by_hand_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    opened(path)
    by_hand(path, "UPDATE user_tokens SET organisation_id = 'm' WHERE user_id = 'acme'")

    with TokenLedger.sqlite(path) as ledger:
        with pytest.raises(LedgerInvariantError, match="longer than 8 accounts"):
            ledger.deduct("m", 1)
        assert not ledger.history(operation_type="deduct")
        assert (ledger.status("m").monthly_used, ledger.status("acme").monthly_used) == (0, 0)
