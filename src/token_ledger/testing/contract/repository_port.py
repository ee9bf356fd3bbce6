"""The repository port itself: each method of :class:`~token_ledger.repository.TokenRepository`
does what it says, on every engine, without the facade in between."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from token_ledger import OperationType, Transaction
from token_ledger.repository import AccountFilter, HistoryQuery, StaleCutoffs, TokenRepository
from token_ledger.testing.contract.base import ContractBase, RepositoryFactory
from token_ledger.testing.contract.values import (
    UTC,
    Boom,
    account,
    append,
    entry,
    grant,
    hold,
    insert,
    later,
)

MAX_PAGES = 20
"""More pages than any paging test needs: an engine that ignores ``before_id`` fails, not hangs."""


def busy_log(repository: TokenRepository) -> list[Transaction]:
    """Six entries of two users over five days, as stored, oldest first."""
    return append(
        repository,
        entry("u1", 1, feature="chat", at=datetime(2026, 1, 10, tzinfo=UTC)),
        entry("u1", 2, feature="search", success=False, at=datetime(2026, 1, 11, tzinfo=UTC)),
        entry(
            "u2",
            5,
            operation_type=OperationType.GRANT,
            reference="g-1",
            at=datetime(2026, 1, 12, tzinfo=UTC),
        ),
        entry(
            "u1",
            1,
            operation_type=OperationType.REFUND,
            reference="r-1",
            at=datetime(2026, 1, 13, tzinfo=UTC),
        ),
        entry("u2", 3, feature="chat", at=datetime(2026, 1, 14, tzinfo=UTC)),
        entry("u1", 4, feature="chat", at=datetime(2026, 1, 14, 12, tzinfo=UTC)),
    )


def pages(repository: TokenRepository, query: HistoryQuery) -> list[list[Transaction]]:
    """Every page of ``query``, each asked for with the last ``id`` of the one before."""
    found: list[list[Transaction]] = []
    page = repository.history(query)
    while page and len(found) < MAX_PAGES:
        found.append(page)
        page = repository.history(attrs.evolve(query, before_id=page[-1].id))
    return found


class RepositoryPortContract(ContractBase):
    """Each method of the port's ``TokenRepository``, called directly."""

    def test_each_repository_the_hook_makes_is_empty_and_separate(
        self, repository_factory: RepositoryFactory
    ) -> None:
        """``create_repository`` returns a new, empty repository on every call, which sees
        nothing written to another: what every other test of the contract relies on."""
        first = repository_factory()
        insert(first, account("u1"))
        append(first, entry("u1"))

        second = repository_factory()

        expected: tuple[object, ...] = (0, [], None)
        assert expected == (
            second.count_accounts(),
            second.history(HistoryQuery()),
            second.get_account("u1"),
        )

    def test_unit_of_work_commits_every_write_of_a_block_that_exits_cleanly(
        self, repository: TokenRepository
    ) -> None:
        """Leaving the ``unit_of_work`` block normally commits all of its writes: later
        units of work and the reads outside any see them."""
        held = hold("h-1")
        given = grant("g-1")
        opened = account("u1", grant_balance=5, reserved_tokens=3, grants=(given,), holds=(held,))

        with repository.unit_of_work() as work:
            assert work.insert_account(opened)
            work.save_grants([given])
            work.save_reservations([held])
            (stored,) = work.append_transactions([entry(amount=3, idempotency_key="k-1")])
        with repository.unit_of_work() as work:
            seen = (
                work.load_account("u1"),
                work.find_reservation("h-1"),
                work.find_by_idempotency_key("k-1"),
            )

        assert (opened, held, stored) == seen
        assert (opened, [stored]) == (
            repository.get_account("u1"),
            repository.history(HistoryQuery()),
        )

    def test_unit_of_work_rolls_back_every_write_of_a_block_that_raises(
        self, repository: TokenRepository
    ) -> None:
        """A block that raises stores none of its writes, lets its own exception through
        unchanged, and leaves the repository ready for the next unit of work."""
        opened = account("u1")
        insert(repository, opened)
        (first,) = append(repository, entry(amount=1))
        given, held = grant("g-1"), hold("h-1")

        def write_then_fail() -> None:
            with repository.unit_of_work() as work:
                assert work.insert_account(account("u2"))
                work.save_accounts(
                    [
                        later(
                            opened,
                            monthly_tokens_used=4,
                            grant_balance=5,
                            reserved_tokens=3,
                            grants=(given,),
                            holds=(held,),
                        )
                    ]
                )
                work.save_grants([given])
                work.save_reservations([held])
                work.append_transactions([entry(amount=4, idempotency_key="k-1")])
                raise Boom("rolled back")

        with pytest.raises(Boom) as raised:
            write_then_fail()

        with repository.unit_of_work() as work:
            after = (
                work.load_account("u1"),
                work.load_account("u2"),
                work.find_reservation("h-1"),
                work.find_by_idempotency_key("k-1"),
            )
            reopened = work.insert_account(account("u2"))
        assert (Boom, "rolled back") == (type(raised.value), str(raised.value))
        assert (opened, None, None, None) == after
        assert ([first], True) == (repository.history(HistoryQuery()), reopened)

    def test_get_account_reads_the_latest_committed_account_or_none(
        self, repository: TokenRepository
    ) -> None:
        """``get_account`` returns the account as the last committed unit of work left it,
        instants to the microsecond, and ``None`` for an unknown user."""
        anchor = datetime(2026, 1, 10, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
        opened = account("u1", 50, reset_anchor=anchor)
        insert(repository, opened)
        updated = later(opened, monthly_tokens_used=6)

        with repository.unit_of_work() as work:
            work.save_accounts([updated])

        assert (updated, None) == (repository.get_account("u1"), repository.get_account("nobody"))

    def test_history_applies_each_filter_and_returns_entries_newest_first(
        self, repository: TokenRepository
    ) -> None:
        """Each filter of ``HistoryQuery`` on its own and all of them together: ``since`` is
        inclusive and ``until`` exclusive, compared as instants in any zone, ``before_id``
        keeps smaller ids, and ``limit`` keeps the newest."""
        e1, e2, e3, e4, e5, e6 = busy_log(repository)
        plus_one = timezone(timedelta(hours=1))
        cases = [
            ("everything", HistoryQuery(), [e6, e5, e4, e3, e2, e1]),
            ("user_id", HistoryQuery(user_id="u2"), [e5, e3]),
            ("operation_type", HistoryQuery(operation_type=OperationType.DEDUCT), [e6, e5, e2, e1]),
            ("operation_type text", HistoryQuery(operation_type="refund"), [e4]),
            ("feature", HistoryQuery(feature="chat"), [e6, e5, e1]),
            ("success", HistoryQuery(success=False), [e2]),
            ("since", HistoryQuery(since=datetime(2026, 1, 12, tzinfo=UTC)), [e6, e5, e4, e3]),
            (
                "since +01:00",
                HistoryQuery(since=datetime(2026, 1, 12, 1, tzinfo=plus_one)),
                [e6, e5, e4, e3],
            ),
            ("until", HistoryQuery(until=datetime(2026, 1, 13, tzinfo=UTC)), [e3, e2, e1]),
            ("before_id", HistoryQuery(before_id=e4.id), [e3, e2, e1]),
            ("reference", HistoryQuery(reference="g-1"), [e3]),
            ("limit", HistoryQuery(limit=2), [e6, e5]),
            (
                "all together",
                HistoryQuery(
                    user_id="u1",
                    operation_type="deduct",
                    feature="chat",
                    success=True,
                    since=datetime(2026, 1, 10, tzinfo=UTC),
                    until=datetime(2026, 1, 15, tzinfo=UTC),
                    before_id=e6.id,
                    limit=10,
                ),
                [e1],
            ),
            ("nothing matches", HistoryQuery(user_id="u1", reference="g-1"), []),
        ]

        assert [(name, expected) for name, _, expected in cases] == [
            (name, repository.history(query)) for name, query, _ in cases
        ]

    def test_history_pages_by_keyset_with_before_id(self, repository: TokenRepository) -> None:
        """Asking for the page before the last ``id`` of the previous one visits every
        matching entry once, newest first, and ends with an empty page."""
        e1, e2, e3, e4, e5, e6 = busy_log(repository)

        assert [[e6, e5], [e4, e3], [e2, e1]] == pages(repository, HistoryQuery(limit=2))
        assert [[e6, e4, e2], [e1]] == pages(repository, HistoryQuery(user_id="u1", limit=3))

    def test_count_transactions_counts_what_history_would_return_without_its_limit(
        self, repository: TokenRepository
    ) -> None:
        """``count_transactions`` applies the same filters as ``history`` but neither
        ``limit`` nor ``before_id``."""
        _, e2, *_ = busy_log(repository)
        queries = [
            HistoryQuery(),
            HistoryQuery(user_id="u1"),
            HistoryQuery(feature="chat", success=True),
            HistoryQuery(since=datetime(2026, 1, 12, tzinfo=UTC)),
            HistoryQuery(user_id="u1", limit=1, before_id=e2.id),
            HistoryQuery(reference="nothing"),
        ]

        expected = [6, 4, 3, 4, 4, 0]
        assert expected == [repository.count_transactions(q) for q in queries]

    def test_count_accounts_counts_the_stored_accounts(self, repository: TokenRepository) -> None:
        """``count_accounts`` counts committed accounts: a refused insert and a rolled-back
        unit of work add none."""
        empty = repository.count_accounts()
        insert(repository, account("a"), account("b"))
        insert(repository, account("a", 99))

        def insert_then_fail() -> None:
            with repository.unit_of_work() as work:
                work.insert_account(account("c"))
                raise Boom

        with pytest.raises(Boom):
            insert_then_fail()

        expected = (0, 2)
        assert expected == (empty, repository.count_accounts())

    def test_scan_accounts_filters_and_pages_by_user_id(self, repository: TokenRepository) -> None:
        """``scan_accounts`` returns the accounts matching ``AccountFilter`` (``stale`` as
        ``StaleCutoffs`` say, ``usage_above`` a fraction of the limit, strictly above),
        ordered by ``user_id``, at most ``limit`` of them, after ``after_user_id``."""
        anchor = datetime(2026, 1, 20, 10, tzinfo=UTC)
        february = datetime(2026, 2, 10, tzinfo=UTC)
        heavy = account("a-heavy", monthly_tokens_used=10)
        ninety = account("b-ninety", monthly_tokens_used=9)
        light = account("c-light", monthly_tokens_used=2)
        current = account("d-current", at=february, monthly_tokens_used=10)
        anchored = account("e-anchored", at=anchor, reset_anchor=anchor)
        insert(repository, current, light, anchored, heavy, ninety)
        stale = StaleCutoffs(calendar=datetime(2026, 2, 1, tzinfo=UTC), anchored=anchor)
        scans = [
            (AccountFilter(), None, 10),
            (AccountFilter(), None, 2),
            (AccountFilter(), "b-ninety", 2),
            (AccountFilter(), "e-anchored", 2),
            (AccountFilter(stale=stale), None, 10),
            (AccountFilter(usage_above=0.9), None, 10),
            (AccountFilter(stale=stale, usage_above=0.9), None, 10),
            (AccountFilter(stale=stale), "a-heavy", 2),
        ]

        assert [
            [heavy, ninety, light, current, anchored],
            [heavy, ninety],
            [light, current],
            [],
            [heavy, ninety, light, anchored],
            [heavy, current],
            [heavy],
            [ninety, light],
        ] == [repository.scan_accounts(where, after, limit) for where, after, limit in scans]

    def test_close_ends_one_repository_and_leaves_the_others_working(
        self, repository_factory: RepositoryFactory
    ) -> None:
        """``close`` may be called more than once (the fixtures close every repository
        they made at the end), and another repository of the engine keeps working."""
        closed, kept = repository_factory(), repository_factory()
        insert(closed, account("u1"))
        insert(kept, account("u2"))

        closed.close()
        closed.close()

        assert (account("u2"), None) == (kept.get_account("u2"), kept.get_account("u1"))
