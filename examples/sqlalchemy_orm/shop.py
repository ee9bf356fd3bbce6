"""Orders paid for in tokens, in one SQLAlchemy ORM transaction: both are stored, or neither.

    pip install -e ".[postgres]" "sqlalchemy>=2"
    python examples/sqlalchemy_orm/shop.py                     # SQLite: shop.db, here
    python examples/sqlalchemy_orm/shop.py "postgresql+psycopg://app:secret@localhost/app"

The ledger's tables live in the application's database, next to ``orders``. A
ledger opened once at startup creates them; after that each order is one
transaction of the Session: the order row and its deduction commit together,
and a failure after charging rolls both back.
"""

from __future__ import annotations

import sys
from typing import Any

from sqlalchemy import Engine, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.within import retrying


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    item: Mapped[str] = mapped_column(String(255))
    tokens: Mapped[int]
    ledger_entry_id: Mapped[int | None]


class PaymentFailed(Exception):
    pass


def open_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        # Every transaction takes SQLite's write lock at BEGIN: one that read first could
        # not become the writer while another connection writes (the ledger would refuse
        # it at once with WriteLockUnavailable). SQLAlchemy's documented recipe for this.
        @event.listens_for(engine, "connect")
        def _leave_begin_to_sqlalchemy(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def open_ledger(engine: Engine) -> TokenLedger:
    """The ledger on the application's database, opened once: this creates its tables."""
    if engine.dialect.name == "sqlite":
        return TokenLedger.sqlite(engine.url.database or ":memory:")
    plain = engine.url.set(drivername="postgresql")  # libpq's URL, for psycopg
    return TokenLedger.postgres(plain.render_as_string(hide_password=False))


def place_order(
    sessions: sessionmaker[Session],
    ledger: TokenLedger,
    user_id: str,
    item: str,
    tokens: int,
    *,
    fail_after_charging: bool = False,
) -> Order:
    """Store the order and spend its tokens in one transaction, run again if it lost a race."""

    def attempt() -> Order:
        with sessions.begin() as session:
            order = Order(user_id=user_id, item=item, tokens=tokens)
            session.add(order)
            session.flush()  # the order's id, for the idempotency key
            with ledger.within(session) as spend:
                charged = spend.deduct(
                    user_id, tokens, feature=item, idempotency_key=f"order-{order.id}"
                )
            order.ledger_entry_id = charged.transaction.id
            if fail_after_charging:
                raise PaymentFailed(f"the card was declined for order {order.id}")
        return order

    return retrying(attempt)


def main(url: str) -> None:
    engine = open_engine(url)
    Base.metadata.create_all(engine)
    ledger = open_ledger(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    ledger.ensure_account("alice", monthly_limit=10)

    order = place_order(sessions, ledger, "alice", "summary", 4)
    print(f"placed order {order.id} (summary, 4 tokens): ledger entry {order.ledger_entry_id}")
    try:
        place_order(sessions, ledger, "alice", "translation", 20)
    except InsufficientTokens as refused:
        print(f"refused translation: asked for {refused.requested}, {refused.remaining} remaining")
    try:
        place_order(sessions, ledger, "alice", "report", 3, fail_after_charging=True)
    except PaymentFailed as failed:
        print(f"rolled back: {failed}; neither the order nor its charge is stored")

    with sessions() as session:
        stored = session.scalars(select(Order).order_by(Order.id)).all()
        print("orders:", [(o.item, o.tokens, o.ledger_entry_id) for o in stored])
    print("status:", ledger.status("alice").to_dict())
    print("reconcile:", ledger.reconcile())
    ledger.close()
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///shop.db")
