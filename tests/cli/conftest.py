"""A ledger database for the command line to reach with ``--db``, and a runner to reach it.

``ENGINES`` lists the databases every command-line test runs against. Each
gives the ``--db`` value and opens the same database through the library,
with any clock, so a test can prepare accounts in another month.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
import pytest
from click.testing import CliRunner, Result

from cli.helpers import LedgerDatabase, Run
from postgres_server import Database
from token_ledger import TokenLedger
from token_ledger.cli import cli
from token_ledger.testing import MovableClock

ENV_VARS = ("TOKEN_LEDGER_DATABASE_URL", "TOKEN_LEDGER_TIMEZONE")
LONG_AGO = datetime(2020, 1, 15, 12, 0, tzinfo=timezone.utc)


def sqlite_database(request: pytest.FixtureRequest, directory: Path) -> LedgerDatabase:
    database = LedgerDatabase(
        str(directory / "ledger.db"), lambda url, clock: TokenLedger.sqlite(url, clock=clock)
    )
    database.open().close()  # the command line opens only existing files
    return database


def postgres_database(request: pytest.FixtureRequest, directory: Path) -> LedgerDatabase:
    """A database of its own on the test server, reached by a ``postgresql://`` URL."""
    server: Database = request.getfixturevalue("postgres_database")
    made = server.new_database()
    conninfo = made.__enter__()
    request.addfinalizer(lambda: made.__exit__(None, None, None))
    url = as_url(conninfo)
    database = LedgerDatabase(url, lambda url, clock: TokenLedger.postgres(url, clock=clock))
    database.open().close()
    return database


def as_url(conninfo: str) -> str:
    """The ``postgresql://`` form of a libpq connection string, as operators write it."""
    parts = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(parts.pop("user", "")), safe="")
    password = parts.pop("password", None)
    credentials = f"{user}:{quote(str(password), safe='')}@" if password else f"{user}@"
    dbname = quote(str(parts.pop("dbname", "")), safe="")
    return f"postgresql://{credentials}/{dbname}?{urlencode({k: str(v) for k, v in parts.items()})}"


ENGINES = [
    pytest.param(sqlite_database, id="sqlite"),
    pytest.param(postgres_database, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ledger settings from the environment, and the default ``tokens.db`` lands in tmp."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDatabase:
    directory = tmp_path / "database"
    directory.mkdir()
    factory: Callable[[pytest.FixtureRequest, Path], LedgerDatabase] = request.param
    return factory(request, directory)


@pytest.fixture
def ledger(database: LedgerDatabase) -> Iterator[TokenLedger]:
    """The test's own view of the database, on the system clock like the command line."""
    with database.open() as ledger:
        yield ledger


@pytest.fixture
def past(database: LedgerDatabase) -> Iterator[TokenLedger]:
    """The database seen from January 2020: accounts opened here are stale today."""
    with database.open(MovableClock(LONG_AGO)) as ledger:
        yield ledger


@pytest.fixture
def run(database: LedgerDatabase) -> Run:
    """Runs ``token-ledger --db <database> ARGS`` in click's runner; exceptions propagate."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(cli, ["--db", database.url, *args], env=env, catch_exceptions=False)

    return invoke
