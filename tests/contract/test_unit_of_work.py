"""The repository port itself: a unit of work is all or nothing, on every engine."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from token_ledger import HistoryQuery, Ledger, OperationType, TokenRepository, Transaction

NOW = datetime(2026, 1, 15, tzinfo=timezone.utc)


class Boom(Exception):
    pass


def test_a_unit_of_work_that_raises_stores_nothing(repository: TokenRepository) -> None:
    account = Ledger().open("u1", 10, NOW)

    def write_then_fail() -> None:
        with repository.unit_of_work() as work:
            assert work.insert_account(account)
            work.append_transactions(
                [Transaction("u1", OperationType.DEDUCT, 1, NOW, balance_after=9)]
            )
            raise Boom

    with pytest.raises(Boom):
        write_then_fail()

    assert repository.get_account("u1") is None
    assert repository.history(HistoryQuery()) == []


def test_insert_account_refuses_a_second_account_for_the_user(
    repository: TokenRepository,
) -> None:
    account = Ledger().open("u1", 10, NOW)
    with repository.unit_of_work() as work:
        assert work.insert_account(account) is True

    with repository.unit_of_work() as work:
        assert work.insert_account(account) is False


def test_appended_entries_get_increasing_ids(repository: TokenRepository) -> None:
    entries = [Transaction("u1", OperationType.DEDUCT, n, NOW, balance_after=0) for n in (1, 2)]

    with repository.unit_of_work() as work:
        first = work.append_transactions(entries)
    with repository.unit_of_work() as work:
        second = work.append_transactions(entries)

    ids = [entry.id for entry in first + second]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
