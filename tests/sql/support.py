"""Helpers of the optional SQL's tests: schemas with the SQL installed, sessions in them."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from postgres_server import Database
from token_ledger import install_postgres_sql
from token_ledger.postgres import PostgresRepository


def installed_schema(database: Database, request: pytest.FixtureRequest) -> str:
    """A new schema with the tables (a ledger opened once) and the SQL, dropped afterwards."""
    schema = database.new_schema(request)
    PostgresRepository(database.url, schema=schema).close()
    with database.connect() as conn:
        install_postgres_sql(conn, schema=schema)
    return schema


def connect_to(database: Database, schema: str) -> psycopg.Connection[Any]:
    """An autocommit session whose unqualified names are the schema's, in UTC."""
    conn = database.connect()
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.execute("SET TIME ZONE 'UTC'")
    return conn
