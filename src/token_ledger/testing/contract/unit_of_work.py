"""The repository port itself: a unit of work is all or nothing, and each of its methods
does what :class:`~token_ledger.repository.UnitOfWork` says, on every engine."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest

from token_ledger import (
    MonthlyResetPolicy,
    OperationType,
    ReservationStatus,
    TokenAccount,
    Transaction,
)
from token_ledger.repository import HistoryQuery, StaleCutoffs, TokenRepository
from token_ledger.testing.contract.base import ContractBase
from token_ledger.testing.contract.values import (
    NOW,
    UTC,
    Boom,
    account,
    append,
    assigned_ids,
    entry,
    grant,
    hold,
    insert,
    later,
)
from token_ledger.transactions import Effects


class UnitOfWorkContract(ContractBase):
    """The unit of work of the port: all or nothing, and each of its methods."""

    def test_a_unit_of_work_that_raises_stores_nothing(self, repository: TokenRepository) -> None:
        account = TokenAccount.open("u1", 10, MonthlyResetPolicy(), NOW)

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
        self,
        repository: TokenRepository,
    ) -> None:
        account = TokenAccount.open("u1", 10, MonthlyResetPolicy(), NOW)
        with repository.unit_of_work() as work:
            assert work.insert_account(account) is True

        with repository.unit_of_work() as work:
            assert work.insert_account(account) is False

    def test_appended_entries_get_increasing_ids(self, repository: TokenRepository) -> None:
        entries = [Transaction("u1", OperationType.DEDUCT, n, NOW, balance_after=0) for n in (1, 2)]

        with repository.unit_of_work() as work:
            first = work.append_transactions(entries)
        with repository.unit_of_work() as work:
            second = work.append_transactions(entries)

        ids: list[Any] = [entry.id for entry in first + second]
        assert all(isinstance(i, int) for i in ids)
        assert ids == sorted(ids)
        assert len(set(ids)) == 4

    # one test per method of the port's UnitOfWork

    def test_load_account_reads_the_stored_account_and_the_unit_s_own_writes(
        self, repository: TokenRepository
    ) -> None:
        """``load_account`` returns the account as stored and ``None`` for an unknown user,
        and sees what its unit of work wrote before that is committed."""
        stored = account("u1")

        with repository.unit_of_work() as work:
            assert work.insert_account(stored)
            within = (work.load_account("u1"), work.load_account("nobody"))
        with repository.unit_of_work() as work:
            after = (work.load_account("u1"), work.load_account("nobody"))

        assert (stored, None) == within
        assert (stored, None) == after

    def test_load_account_carries_live_grants_and_held_reservations_only(
        self, repository: TokenRepository
    ) -> None:
        """An account comes back with the grants that have ``remaining > 0`` and the
        reservations still ``held``, whatever else ``save_grants`` and
        ``save_reservations`` stored for the user."""
        live = grant("g-live")
        spent = attrs.evolve(grant("g-spent", at=NOW + timedelta(seconds=1)), remaining=0)
        held = hold("h-held", feature="llm")
        done = hold("h-done", at=NOW + timedelta(seconds=1), status=ReservationStatus.COMMITTED)
        stored = account("u1", grant_balance=5, reserved_tokens=3, grants=(live,), holds=(held,))

        with repository.unit_of_work() as work:
            assert work.insert_account(stored)
            work.save_grants([live, spent])
            work.save_reservations([held, done])
        with repository.unit_of_work() as work:
            loaded = work.load_account("u1")

        assert (stored, stored) == (loaded, repository.get_account("u1"))

    def test_insert_account_stores_a_new_account_and_refuses_another_for_the_user(
        self, repository: TokenRepository
    ) -> None:
        """``insert_account`` answers ``True`` and stores the account as given; for a user
        who has one, in the same unit of work or a later one, it answers ``False`` and
        the stored account stays as it was."""
        anchor = datetime(2026, 1, 10, 9, 30, 15, 123456, tzinfo=UTC)
        first = account("u1", 10, reset_anchor=anchor)
        other = account("u1", 99)

        with repository.unit_of_work() as work:
            answers = [work.insert_account(first), work.insert_account(other)]
        with repository.unit_of_work() as work:
            answers.append(work.insert_account(other))

        expected = [True, False, False]
        assert expected == answers
        assert (first, 1) == (repository.get_account("u1"), repository.count_accounts())

    def test_save_accounts_stores_each_account_s_own_columns(
        self, repository: TokenRepository
    ) -> None:
        """``save_accounts`` stores every account of the batch: limits, usage, the period's
        start and ``updated_at``, including a reset into a new period."""
        spending, resetting = account("a"), account("b", 20, monthly_tokens_used=7)
        insert(repository, spending, resetting)
        saved = [
            later(spending, monthly_tokens_used=4, monthly_limit=12, overage_limit=2),
            attrs.evolve(
                resetting,
                monthly_tokens_used=0,
                last_monthly_reset=datetime(2026, 2, 1, tzinfo=UTC),
                updated_at=datetime(2026, 2, 2, 8, tzinfo=UTC),
            ),
        ]

        with repository.unit_of_work() as work:
            work.save_accounts(saved)

        assert saved == [repository.get_account("a"), repository.get_account("b")]

    def test_save_grants_inserts_new_grants_and_updates_the_remaining_of_known_ones(
        self, repository: TokenRepository
    ) -> None:
        """``save_grants`` stores new grants with every field, and for a grant it knows
        stores the new ``remaining``; a grant spent to zero is no longer live."""
        first = grant("g-1", amount=5)
        second = grant(
            "g-2",
            amount=4,
            at=NOW + timedelta(seconds=1),
            expires_at=NOW + timedelta(days=30),
            reason="promo",
        )
        opened = account("u1", grant_balance=9, grants=(first, second))
        partly = attrs.evolve(second, remaining=1)
        spent = later(opened, grant_balance=1, grants=(partly,), monthly_tokens_used=10)

        with repository.unit_of_work() as work:
            assert work.insert_account(opened)
            work.save_grants([first, second])
        with repository.unit_of_work() as work:
            loaded = [work.load_account("u1")]
            work.save_grants([attrs.evolve(first, remaining=0), partly])
            work.save_accounts([spent])
        with repository.unit_of_work() as work:
            loaded.append(work.load_account("u1"))

        assert [opened, spent] == loaded

    def test_save_reservations_inserts_new_ones_and_updates_the_status_of_known_ones(
        self, repository: TokenRepository
    ) -> None:
        """``save_reservations`` stores new reservations with every field, and for one it
        knows stores the new ``status``; a committed one is no longer held."""
        first = hold("h-1", amount=3)
        second = hold("h-2", amount=2, at=NOW + timedelta(seconds=1), feature="chat")
        opened = account("u1", reserved_tokens=5, holds=(first, second))
        committed = attrs.evolve(first, status=ReservationStatus.COMMITTED)
        settled = later(opened, reserved_tokens=2, holds=(second,), monthly_tokens_used=3)

        with repository.unit_of_work() as work:
            assert work.insert_account(opened)
            work.save_reservations([first, second])
        with repository.unit_of_work() as work:
            work.save_reservations([committed])
            work.save_accounts([settled])
        with repository.unit_of_work() as work:
            found = [work.find_reservation("h-1"), work.find_reservation("h-2")]
            loaded = work.load_account("u1")

        assert [committed, second] == found
        assert settled == loaded

    def test_find_transaction_returns_the_stored_entry_with_every_field(
        self, repository: TokenRepository
    ) -> None:
        """``find_transaction`` returns the entry with that ``id`` exactly as it was
        appended, context, effects and reference included, and ``None`` for an unknown id."""
        written = Transaction(
            "u1",
            OperationType.DEDUCT,
            3,
            NOW,
            balance_after=2,
            success=False,
            feature="chat",
            operation_context={"nested": {"list": [1, 2.5, None, "é"]}, "flag": False},
            idempotency_key="req-1",
            effects=Effects(usage=2, reserved=-1, grants={"g-1": -1}),
            reference="h-1",
        )
        (stored,) = append(repository, written)
        assert stored.id is not None

        with repository.unit_of_work() as work:
            found = [work.find_transaction(stored.id), work.find_transaction(stored.id + 1000)]

        assert [attrs.evolve(written, id=stored.id), None] == found

    def test_entries_referencing_returns_the_entries_about_a_reference_oldest_first(
        self, repository: TokenRepository
    ) -> None:
        """``entries_referencing`` returns every entry whose ``reference`` is the one asked
        for, oldest first, and nothing for a reference no entry has."""
        stored = append(
            repository,
            entry(amount=5, operation_type=OperationType.GRANT, reference="g-1"),
            entry(amount=1, reference="g-2"),
            entry(amount=2),
            entry(
                amount=5,
                operation_type=OperationType.EXPIRE,
                reference="g-1",
                at=NOW + timedelta(days=1),
            ),
        )

        with repository.unit_of_work() as work:
            found = (work.entries_referencing("g-1"), work.entries_referencing("nothing"))

        assert ([stored[0], stored[3]], []) == found

    def test_reset_after_tells_whether_a_reset_of_the_account_follows_an_entry(
        self, repository: TokenRepository
    ) -> None:
        """Only the account's own ``reset`` entries count, stored or in this unit of work."""
        stored = append(
            repository,
            entry(amount=5),
            entry(amount=5, operation_type=OperationType.RESET),
            entry(amount=1),
            entry("u2", 3, operation_type=OperationType.RESET),
        )
        first, reset, last, other = (e.id or 0 for e in stored)

        with repository.unit_of_work() as work:
            answers = [work.reset_after("u1", n) for n in (first, reset, last)]
            assert (work.reset_after("u2", last), work.reset_after("u2", other)) == (True, False)
            work.append_transactions([entry(amount=1, operation_type=OperationType.RESET)])
            assert work.reset_after("u1", last)

        assert answers == [True, False, False]

    def test_find_reservation_returns_the_stored_reservation_or_none(
        self, repository: TokenRepository
    ) -> None:
        """``find_reservation`` returns the reservation with that id as it was saved, and
        ``None`` for an unknown id."""
        held = hold("h-1", amount=3, feature="llm")

        with repository.unit_of_work() as work:
            assert work.insert_account(account("u1", reserved_tokens=3, holds=(held,)))
            work.save_reservations([held])
        with repository.unit_of_work() as work:
            found = (work.find_reservation("h-1"), work.find_reservation("h-unknown"))

        assert (held, None) == found

    def test_append_transactions_returns_the_entries_in_order_with_their_ids(
        self, repository: TokenRepository
    ) -> None:
        """``append_transactions`` returns the entries it was given, in their order, each
        with a new ``id`` that grows in that order (whatever their ``created_at``), and
        ``history`` returns them newest first."""
        given = [entry(amount=n, at=NOW + timedelta(minutes=10 - n)) for n in (3, 1, 2)]

        with repository.unit_of_work() as work:
            stored = work.append_transactions(given)

        assigned = assigned_ids(stored)
        assert [attrs.evolve(e, id=i) for e, i in zip(given, assigned, strict=True)] == stored
        assert sorted(set(assigned)) == assigned
        assert stored[::-1] == repository.history(HistoryQuery())

    def test_find_by_idempotency_key_finds_the_entry_written_with_the_key(
        self, repository: TokenRepository
    ) -> None:
        """``find_by_idempotency_key`` returns the entry stored with the key, within the
        unit of work that appended it and after, and ``None`` for a key no entry has."""
        keyed = entry(amount=5, feature="chat", idempotency_key="req-1")

        with repository.unit_of_work() as work:
            stored = work.append_transactions([entry(amount=1), keyed])[1]
            within = work.find_by_idempotency_key("req-1")
        with repository.unit_of_work() as work:
            after = (work.find_by_idempotency_key("req-1"), work.find_by_idempotency_key("req-2"))

        assert stored == within
        assert (stored, None) == after

    def test_lock_stale_candidates_selects_possibly_stale_accounts_by_user_id(
        self, repository: TokenRepository
    ) -> None:
        """``lock_stale_candidates`` returns the accounts under the cutoffs (without an
        anchor: ``last_monthly_reset < calendar``; with one: ``<= anchored``), ordered
        by ``user_id``, at most ``limit`` of them, after ``after_user_id``."""
        anchor = datetime(2026, 1, 20, 10, tzinfo=UTC)
        february = datetime(2026, 2, 10, tzinfo=UTC)
        anchored = account("a-anchored", at=anchor, reset_anchor=anchor)
        calendar = account("b-calendar")
        current = account("c-current", at=february)
        anchored_current = account("d-anchored-current", at=february, reset_anchor=february)
        also_calendar = account("e-calendar", monthly_tokens_used=4)
        insert(repository, calendar, anchored_current, anchored, also_calendar, current)
        cutoffs = StaleCutoffs(calendar=datetime(2026, 2, 1, tzinfo=UTC), anchored=anchor)

        with repository.unit_of_work() as work:
            pages = [
                work.lock_stale_candidates(cutoffs, None, 10),
                work.lock_stale_candidates(cutoffs, None, 2),
                work.lock_stale_candidates(cutoffs, "b-calendar", 2),
                work.lock_stale_candidates(cutoffs, "e-calendar", 2),
            ]

        assert [
            [anchored, calendar, also_calendar],
            [anchored, calendar],
            [also_calendar],
            [],
        ] == pages

    def test_every_batch_method_takes_an_empty_batch(self, repository: TokenRepository) -> None:
        """``save_accounts``, ``save_grants``, ``save_reservations`` and
        ``append_transactions`` accept an empty sequence and write nothing."""
        with repository.unit_of_work() as work:
            work.save_accounts([])
            work.save_grants([])
            work.save_reservations([])
            appended = work.append_transactions([])

        expected: tuple[object, ...] = ([], 0, [])
        assert expected == (
            appended,
            repository.count_accounts(),
            repository.history(HistoryQuery()),
        )
