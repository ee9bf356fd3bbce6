"""SQLite's shortcuts: the statements they send, and an SQLite too old for them.

``tests/test_shortcuts.py`` holds them to the rows and answers of the paths they
shortcut; these pin what they send (``set_trace_callback`` sees every statement)
and that an SQLite before 3.35 (no ``UPDATE ... RETURNING``, no ``MATERIALIZED``)
takes the ordinary paths with the same answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from token_ledger import TokenLedger, operations
from token_ledger.operations import DirectDeduction, Spent
from token_ledger.repository import SHORTCUT_METHODS
from token_ledger.sqlite import SQLiteRepository
from token_ledger.testing import MovableClock

UTC = timezone.utc
JANUARY = datetime(2026, 1, 15, 12, tzinfo=UTC)


@contextmanager
def statements(repository: SQLiteRepository) -> Iterator[list[str]]:
    sent: list[str] = []
    repository.db.conn.set_trace_callback(sent.append)
    try:
        yield sent
    finally:
        repository.db.conn.set_trace_callback(None)


def first_words(sent: list[str]) -> list[str]:
    return [" ".join(text.split()[:2]) for text in sent]


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[TokenLedger, SQLiteRepository, MovableClock]]:
    clock = MovableClock(JANUARY)
    repository = SQLiteRepository(tmp_path / "ledger.db")
    with TokenLedger(repository, clock=clock) as ledger:
        yield ledger, repository, clock


def test_a_common_deduction_is_one_transaction_of_two_statements(
    opened: tuple[TokenLedger, SQLiteRepository, MovableClock],
) -> None:
    ledger, repository, clock = opened
    ledger.open_account("u1", monthly_limit=100)
    clock.advance(timedelta(seconds=1))

    with statements(repository) as sent:
        ledger.deduct("u1", 5, idempotency_key="k1")

    assert first_words(sent) == [
        "BEGIN IMMEDIATE",
        "UPDATE user_tokens",
        "INSERT INTO",
        "COMMIT",
    ]


def test_a_replayed_key_rolls_the_statement_back_and_replays_the_stored_entry(
    opened: tuple[TokenLedger, SQLiteRepository, MovableClock],
) -> None:
    ledger, repository, clock = opened
    ledger.open_account("u1", monthly_limit=100)
    clock.advance(timedelta(seconds=1))
    first = ledger.deduct("u1", 5, idempotency_key="k1")
    clock.advance(timedelta(seconds=1))

    with statements(repository) as sent:
        again = ledger.deduct("u1", 5, idempotency_key="k1")

    assert again == first
    assert first_words(sent)[:4] == [
        "BEGIN IMMEDIATE",
        "UPDATE user_tokens",
        "INSERT INTO",
        "ROLLBACK",
    ]
    assert ledger.status("u1").monthly_used == 5
    assert len(ledger.history("u1")) == 1


def test_an_anchored_account_is_tried_once_then_goes_to_the_full_path_at_once(
    opened: tuple[TokenLedger, SQLiteRepository, MovableClock],
) -> None:
    ledger, repository, _ = opened
    ledger.open_account("u1", monthly_limit=100, reset_anchor=JANUARY - timedelta(days=3))

    with statements(repository) as first:
        ledger.deduct("u1", 5)
    with statements(repository) as second:
        ledger.deduct("u1", 5)

    assert first_words(first)[:4] == [
        "BEGIN IMMEDIATE",
        "UPDATE user_tokens",
        "SELECT NOT",
        "ROLLBACK",
    ]
    assert first_words(second)[:2] == ["BEGIN IMMEDIATE", "WITH RECURSIVE"]
    assert ledger.status("u1").monthly_used == 10


def test_a_member_deduction_is_one_transaction_of_four_statements(
    opened: tuple[TokenLedger, SQLiteRepository, MovableClock],
) -> None:
    ledger, repository, clock = opened
    ledger.open_account("org", monthly_limit=100)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org")
    clock.advance(timedelta(seconds=1))

    with statements(repository) as sent:
        ledger.deduct("u1", 5, idempotency_key="k1")

    assert first_words(sent) == [
        "BEGIN IMMEDIATE",
        "UPDATE user_tokens",
        "UPDATE user_tokens",
        "INSERT INTO",
        "INSERT INTO",
        "COMMIT",
    ]
    assert ledger.status("org").monthly_used == 5


def test_the_shortcut_answers_a_member_what_the_full_path_answers(tmp_path: Path) -> None:
    """What is left is the least of the member's and its organisation's budgets."""

    def spent(path: Path, *, shortcut: bool) -> list[object]:
        clock = MovableClock(JANUARY)
        repository = SQLiteRepository(path)
        ledger = TokenLedger(repository, clock=clock)
        ledger.open_account("org", monthly_limit=30)
        ledger.set_limit("org", overage_limit=4)
        ledger.open_account("u1", monthly_limit=50, organisation_id="org")
        clock.advance(timedelta(seconds=1))
        start = ledger.policy.period(clock()).start
        deduction = DirectDeduction("u1", 20, None, {}, None, clock(), start)
        answers: list[object] = []
        if shortcut:
            answers.append(repository.deduct_directly(deduction))
        else:
            with repository.unit_of_work() as work:
                answers.append(
                    operations.run(
                        operations.deduct(
                            ledger.policy,
                            clock(),
                            "u1",
                            20,
                            feature=None,
                            context={},
                            idempotency_key=None,
                        ),
                        work,
                    )
                )
        answers.append(ledger.history(limit=10))
        repository.close()
        return answers

    direct = spent(tmp_path / "direct.db", shortcut=True)
    assert direct == spent(tmp_path / "full.db", shortcut=False)
    assert isinstance(direct[0], Spent)
    assert direct[0].remaining == 30 - 20 + 4


def test_a_member_whose_organisation_has_a_grant_falls_back_with_nothing_changed(
    opened: tuple[TokenLedger, SQLiteRepository, MovableClock],
) -> None:
    ledger, repository, clock = opened
    ledger.open_account("org", monthly_limit=100)
    ledger.open_account("u1", monthly_limit=50, organisation_id="org")
    ledger.grant("org", 10)
    clock.advance(timedelta(seconds=1))

    with statements(repository) as first:
        ledger.deduct("u1", 5)
    clock.advance(timedelta(seconds=1))
    with statements(repository) as second:
        ledger.deduct("u1", 5)

    refused = [
        "BEGIN IMMEDIATE",
        "UPDATE user_tokens",
        "UPDATE user_tokens",
        "SELECT NOT",
        "ROLLBACK",
        "BEGIN IMMEDIATE",
        "WITH RECURSIVE",
    ]
    assert first_words(first)[:7] == refused  # a grant is no reason to remember the member
    assert first_words(second)[:7] == refused
    assert ledger.status("u1").monthly_used == 10
    assert ledger.status("org").monthly_used == 10
    assert len(ledger.history("org")) == 3


def test_a_member_of_a_member_is_tried_once_then_goes_to_the_full_path_at_once(
    opened: tuple[TokenLedger, SQLiteRepository, MovableClock],
) -> None:
    ledger, repository, clock = opened
    ledger.open_account("root", monthly_limit=100)
    ledger.open_account("org", monthly_limit=100, organisation_id="root")
    ledger.open_account("u1", monthly_limit=50, organisation_id="org")
    clock.advance(timedelta(seconds=1))

    with statements(repository) as first:
        ledger.deduct("u1", 5)
    with statements(repository) as second:
        ledger.deduct("u1", 5)

    assert first_words(first)[:5] == [
        "BEGIN IMMEDIATE",
        "UPDATE user_tokens",
        "UPDATE user_tokens",
        "SELECT NOT",
        "ROLLBACK",
    ]
    assert first_words(second)[:2] == ["BEGIN IMMEDIATE", "WITH RECURSIVE"]
    assert [ledger.status(user).monthly_used for user in ("root", "org", "u1")] == [10, 10, 10]


def test_an_sqlite_without_returning_takes_the_ordinary_paths_with_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite 3.34 and older: the repository offers no shortcut at all."""

    def session(path: Path) -> list[object]:
        clock = MovableClock(JANUARY)
        with TokenLedger.sqlite(path, clock=clock) as ledger:
            ledger.open_account("u1", monthly_limit=10)
            ledger.open_account("u2", monthly_limit=10, reset_anchor=JANUARY - timedelta(days=2))
            spent = [ledger.deduct(user, 4, idempotency_key=f"{user}-k") for user in ("u1", "u2")]
            clock.advance(timedelta(days=40))
            return [
                *spent,
                ledger.health(),
                ledger.alerts(),
                ledger.reset_all_stale(batch_size=1),
                ledger.reconcile(),
                ledger.history(limit=100),
            ]

    current = session(tmp_path / "current.db")
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 0))
    old = SQLiteRepository(tmp_path / "probe.db")
    offered = [name for name in SHORTCUT_METHODS if getattr(old, name) is not None]
    old.close()

    assert offered == []
    assert session(tmp_path / "old.db") == current
