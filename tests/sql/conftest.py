"""Fixtures of the optional SQL's PostgreSQL tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from postgres_server import Database
from sql.support import connect_to, installed_schema


@pytest.fixture
def sql_schema(postgres_database: Database, request: pytest.FixtureRequest) -> str:
    return installed_schema(postgres_database, request)


@pytest.fixture
def pg(postgres_database: Database, sql_schema: str) -> Iterator[psycopg.Connection[Any]]:
    with connect_to(postgres_database, sql_schema) as conn:
        yield conn
