"""``ledger.within(connection)`` on both engines: the application's transaction decides."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from token_ledger import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    OperationType,
    StorageError,
    TokenLedger,
)
from token_ledger.testing import MovableClock
from token_ledger.within import LedgerInTransaction, TransactionRequired, within
from within_transaction.engines import Engine


def test_an_order_and_its_deduction_commit_together(engine: Engine) -> None:
    engine.ledger.open_account("u1", monthly_limit=50)
    conn = engine.connect()

    with engine.transaction(conn):
        engine.insert_order(conn, "order-1", "u1")
        with within(engine.ledger, conn) as tokens:
            result = tokens.deduct("u1", 7, feature="order", idempotency_key="order-1")

    assert engine.orders() == {"order-1"}
    assert engine.ledger.status("u1").monthly_used == 7
    assert [e.id for e in engine.ledger.history("u1")] == [result.transaction.id]
    assert engine.ledger.reconcile() == []
    conn.close()


def test_a_rollback_leaves_status_history_reconcile_and_the_key_as_they_were(
    engine: Engine,
) -> None:
    """Nothing of a rolled-back transaction is stored: its idempotency key is free again."""
    ledger = engine.ledger
    ledger.open_account("u1", monthly_limit=50)
    ledger.deduct("u1", 5, feature="earlier")
    before = (ledger.status("u1"), ledger.history("u1").to_dicts(), ledger.reconcile())
    conn = engine.connect()

    def order_whose_payment_fails() -> None:
        with engine.transaction(conn):
            engine.insert_order(conn, "order-1", "u1")
            with within(ledger, conn) as tokens:
                tokens.deduct("u1", 7, idempotency_key="order-1")
                tokens.grant("u1", 100, idempotency_key="promo-1")
            raise RuntimeError("payment failed")

    with pytest.raises(RuntimeError, match="payment failed"):
        order_whose_payment_fails()

    assert engine.orders() == set()
    assert (ledger.status("u1"), ledger.history("u1").to_dicts(), ledger.reconcile()) == before
    replayed = ledger.deduct("u1", 7, idempotency_key="order-1")  # the key was never used
    assert replayed.transaction.id not in {e["id"] for e in before[1]}
    assert ledger.status("u1").monthly_used == 12
    conn.close()


def test_reads_inside_see_the_transactions_own_writes_and_others_see_them_at_commit(
    engine: Engine,
) -> None:
    engine.ledger.open_account("u1", monthly_limit=50)
    conn = engine.connect()

    with engine.transaction(conn), within(engine.ledger, conn) as tokens:
        spent = tokens.deduct("u1", 7, feature="order")
        inside = (
            tokens.status("u1").monthly_used,
            tokens.get_account("u1").monthly_tokens_used,
            [e.id for e in tokens.history("u1")],
            tokens.reconcile("u1"),
            tokens.health().total_users,
            [(row.feature, row.tokens) for row in tokens.usage(by="feature")],
        )
        outside = (engine.ledger.status("u1").monthly_used, engine.ledger.usage())

    assert inside == (7, 7, [spent.transaction.id], [], 1, [("order", 7)])
    assert outside == (0, [])
    assert engine.ledger.status("u1").monthly_used == 7
    conn.close()


def test_a_refusal_leaves_the_transaction_usable_and_its_failed_entry_is_the_callers(
    engine: Engine,
) -> None:
    """InsufficientTokens, AccountNotFound, IdempotencyConflict: the transaction goes on."""
    ledger = engine.ledger
    ledger.open_account("u1", monthly_limit=10)
    conn = engine.connect()

    with engine.transaction(conn):
        with within(ledger, conn) as tokens:
            tokens.deduct("u1", 4, idempotency_key="k")
            with pytest.raises(InsufficientTokens) as refused:
                tokens.deduct("u1", 100)
            with pytest.raises(AccountNotFound):
                tokens.deduct("nobody", 1)
            with pytest.raises(IdempotencyConflict):
                tokens.deduct("u1", 5, idempotency_key="k")
            after_refusals = tokens.deduct("u1", 1)
        engine.insert_order(conn, "order-1", "u1")

    assert refused.value.remaining == 6
    assert after_refusals.monthly_remaining == 5
    assert engine.orders() == {"order-1"}
    assert [(e.amount, e.success) for e in ledger.history("u1")] == [
        (1, True),
        (100, False),
        (4, True),
    ]
    assert ledger.reconcile() == []
    conn.close()


def test_a_call_that_fails_in_the_database_undoes_only_its_own_writes(engine: Engine) -> None:
    """A deduction whose entry the database refuses leaves no usage behind; the rest commits."""
    engine.ledger.open_account("u1", monthly_limit=50)
    engine.run(engine.failing_feature_trigger)
    conn = engine.connect()

    with engine.transaction(conn):
        engine.insert_order(conn, "order-1", "u1")
        with within(engine.ledger, conn) as tokens:
            tokens.deduct("u1", 3, feature="fine")
            with pytest.raises(StorageError, match="boom refused"):
                tokens.deduct("u1", 5, feature="boom")  # its usage was written, then undone
            assert tokens.status("u1").monthly_used == 3
            tokens.deduct("u1", 2, feature="fine")

    assert engine.orders() == {"order-1"}
    assert engine.ledger.status("u1").monthly_used == 5
    assert engine.ledger.reconcile() == []
    conn.close()


def every_call(tokens: TokenLedger | LedgerInTransaction, now: datetime) -> list[object]:
    """Each call of the ledger once; what the reads answered along the way."""
    tokens.open_account("u1", monthly_limit=100)
    seen: list[object] = [tokens.ensure_account("u1", monthly_limit=1).monthly_limit]
    tokens.ensure_account("u2", monthly_limit=20)
    tokens.set_limit("u1", 80, overage_limit=10)
    tokens.grant("u1", 30, expires_at=now + timedelta(days=3), reason="promo")
    spent = tokens.deduct("u1", 90, feature="chat", context={"model": "small"})
    hold = tokens.reserve("u1", 15, ttl=timedelta(minutes=5), feature="llm")
    seen.append(tokens.status("u1").reserved)
    tokens.commit(hold.id, 9)
    tokens.release(tokens.reserve("u2", 5).id)
    tokens.refund(spent.transaction.id, 10, reason="timeout")
    seen.append(tokens.reset_if_needed("u1"))
    seen.append(tokens.get_account("u1").monthly_tokens_used)
    seen.append([e.amount for e in tokens.history("u1", operation_type=OperationType.REFUND)])
    seen.append(tokens.alerts().triggered)
    seen.append(tokens.health().total_users)
    seen.append(tokens.usage(by=("user", "feature", "day")))
    seen += [tokens.status("u1"), tokens.status("u2"), tokens.reconcile(), tokens.reconcile("u2")]
    return seen


def test_every_call_of_the_ledger_runs_inside_and_answers_as_the_ledger_does(
    engine: Engine, clock: MovableClock
) -> None:
    """The same calls answer alike inside a transaction and on a ledger of its own."""
    conn = engine.connect()

    with engine.transaction(conn), within(engine.ledger, conn) as tokens:
        inside = every_call(tokens, clock())
        entries = [(e.operation_type, e.amount, e.success) for e in tokens.history(limit=1000)]

    assert inside == every_call(TokenLedger.memory(clock=clock), clock())
    assert [(e.operation_type, e.amount, e.success) for e in engine.ledger.history()] == entries
    assert engine.ledger.status("u1") == inside[-4]
    assert engine.ledger.reconcile() == []
    conn.close()


def test_the_ledgers_policy_and_clock_apply(engine: Engine, clock: MovableClock) -> None:
    """A month end crossed by the ledger's clock resets the account inside the transaction."""
    ledger = engine.ledger
    clock.set(datetime(2026, 1, 31, 23, 0, tzinfo=timezone.utc))
    ledger.open_account("u1", monthly_limit=10)
    ledger.deduct("u1", 10)
    clock.set(datetime(2026, 2, 1, 0, 5, tzinfo=timezone.utc))
    conn = engine.connect()

    with engine.transaction(conn), within(ledger, conn) as tokens:
        spent = tokens.deduct("u1", 4)

    assert spent.monthly_remaining == 6
    assert spent.transaction.created_at == clock()
    assert [e.operation_type for e in ledger.history("u1")] == [
        OperationType.DEDUCT,
        OperationType.RESET,
        OperationType.DEDUCT,
    ]
    assert ledger.reconcile() == []
    conn.close()


def test_a_key_committed_earlier_replays_in_a_later_transaction(engine: Engine) -> None:
    engine.ledger.open_account("u1", monthly_limit=10)
    conn = engine.connect()
    first = engine.ledger.deduct("u1", 3, idempotency_key="req-1")

    with engine.transaction(conn), within(engine.ledger, conn) as tokens:
        again = tokens.deduct("u1", 3, idempotency_key="req-1")

    assert again.transaction.id == first.transaction.id
    assert engine.ledger.status("u1").monthly_used == 3
    conn.close()


def test_the_block_cannot_be_used_once_it_has_ended(engine: Engine) -> None:
    engine.ledger.open_account("u1", monthly_limit=10)
    conn = engine.connect()

    with engine.transaction(conn):
        with within(engine.ledger, conn) as tokens:
            tokens.deduct("u1", 1)
        with pytest.raises(TransactionRequired, match="has ended"):
            tokens.deduct("u1", 1)

    assert engine.ledger.status("u1").monthly_used == 1
    conn.close()


def test_blocks_nest_and_a_memory_ledger_lends_its_clock_and_policy(
    engine: Engine, clock: MovableClock
) -> None:
    """The tables are those of the connection's database; the ledger only brings its rules."""
    engine.ledger.open_account("u1", monthly_limit=10)
    rules = TokenLedger.memory(clock=clock)
    conn = engine.connect()
    schema = {"schema": engine.schema} if engine.name == "postgres" else {}  # type: ignore[union-attr]

    with engine.transaction(conn), within(rules, conn, **schema) as outer:
        outer.deduct("u1", 1)
        with within(rules, conn, **schema) as inner:
            inner.deduct("u1", 2)
        assert outer.status("u1").monthly_used == 3

    assert engine.ledger.status("u1").monthly_used == 3
    conn.close()
