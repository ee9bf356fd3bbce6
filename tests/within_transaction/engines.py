"""One application database per engine, driven the way an application drives it.

Each engine has the ledger's tables (made by a normal ledger opened once, as
the README asks) and an ``orders`` table of the application's own; a test
opens plain driver connections, runs its transactions on them and checks the
outcome through a fresh connection and a normal ledger.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from token_ledger import TokenLedger
from token_ledger.clock import Clock


class SQLiteEngine:
    """A SQLite file with the ledger's tables and ``orders``."""

    name = "sqlite"

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.ledger = TokenLedger.sqlite(path, clock=clock)
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL)")
        self.failing_feature_trigger = (
            "CREATE TRIGGER fail_on_boom BEFORE INSERT ON token_transactions"
            " WHEN NEW.feature = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        )

    def connect(self, **options: Any) -> sqlite3.Connection:
        """A connection with sqlite3's defaults (legacy transaction control) unless told."""
        options.setdefault("timeout", 10.0)
        return sqlite3.connect(self.path, **options)

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def insert_order(self, conn: sqlite3.Connection, order_id: str, user_id: str) -> None:
        conn.execute("INSERT INTO orders (id, user_id) VALUES (?, ?)", (order_id, user_id))

    def orders(self) -> set[str]:
        """The committed orders, as another connection sees them."""
        with sqlite3.connect(self.path) as conn:
            return {row[0] for row in conn.execute("SELECT id FROM orders")}

    def run(self, statement: str) -> None:
        """Run ``statement`` (the ledger's tables unqualified) on a connection of its own."""
        with sqlite3.connect(self.path) as conn:
            conn.execute(statement)

    def close(self) -> None:
        self.ledger.close()


class PostgresEngine:
    """A schema of the test server with the ledger's tables and ``orders``."""

    name = "postgres"

    def __init__(self, url: str, schema: str, clock: Clock) -> None:
        self.url = url
        self.schema = schema
        self.ledger = TokenLedger.postgres(url, schema=schema, clock=clock)
        self.failing_feature_trigger = (
            f'CREATE FUNCTION "{schema}".fail_on_boom() RETURNS trigger LANGUAGE plpgsql AS'
            " $$ BEGIN RAISE EXCEPTION 'boom refused'; END $$;"
            f' CREATE TRIGGER fail_on_boom BEFORE INSERT ON "{schema}".token_transactions'
            " FOR EACH ROW WHEN (NEW.feature = 'boom')"
            f' EXECUTE FUNCTION "{schema}".fail_on_boom()'
        )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, user_id text NOT NULL)").format(
                    self.orders_table
                )
            )

    @property
    def orders_table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, "orders")

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        """A psycopg connection without autocommit unless told."""
        return psycopg.connect(self.url, **options)

    @contextmanager
    def transaction(self, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        with conn.transaction():
            yield conn

    def insert_order(self, conn: psycopg.Connection[Any], order_id: str, user_id: str) -> None:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, user_id) VALUES (%s, %s)").format(self.orders_table),
            (order_id, user_id),
        )

    def orders(self) -> set[str]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            query = sql.SQL("SELECT id FROM {}").format(self.orders_table)
            return {row[0] for row in conn.execute(query)}

    def run(self, statement: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement.encode())

    def close(self) -> None:
        self.ledger.close()


Engine = SQLiteEngine | PostgresEngine
