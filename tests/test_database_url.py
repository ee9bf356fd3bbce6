"""``token_ledger.database_url``: the one reading of a database URL, and ``TokenLedger.open``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from postgres_server import Database, as_url
from token_ledger import InvalidInput, MonthlyResetPolicy, TokenLedger
from token_ledger.database_url import DatabaseNotFound, DatabaseURL, parse_database_url
from token_ledger.memory import MemoryRepository
from token_ledger.postgres import PostgresRepository
from token_ledger.sqlite import SQLiteRepository
from token_ledger.testing import MovableClock

ACCEPTED = [
    ("postgresql://ops:secret@db.example:5432/app?sslmode=require", "postgres", None),
    ("postgres://ops@db.example/app", "postgres", None),
    ("postgresql://", "postgres", None),
    ("sqlite:///tokens.db", "sqlite", "tokens.db"),
    ("sqlite:///data/tokens.db", "sqlite", "data/tokens.db"),
    ("sqlite:////var/lib/app/tokens.db", "sqlite", "/var/lib/app/tokens.db"),
    ("sqlite://:memory:", "sqlite", ":memory:"),
    ("sqlite:///:memory:", "sqlite", ":memory:"),
    ("tokens.db", "sqlite", "tokens.db"),
    ("./data/tokens.db", "sqlite", "./data/tokens.db"),
    ("/var/lib/app/tokens.db", "sqlite", "/var/lib/app/tokens.db"),
    ("C:/ledgers/tokens.db", "sqlite", "C:/ledgers/tokens.db"),
    ("notes:2026.db", "sqlite", "notes:2026.db"),
    (":memory:", "sqlite", ":memory:"),
    ("grüße 🦊.db", "sqlite", "grüße 🦊.db"),
    ("memory://", "memory", ""),
]


@pytest.mark.parametrize(("url", "engine", "target"), ACCEPTED, ids=[u for u, _, _ in ACCEPTED])
def test_accepted_urls(url: str, engine: str, target: str | None) -> None:
    """PostgreSQL URLs go to psycopg as written; SQLite ones become a file name."""
    parsed = parse_database_url(url)

    assert parsed == DatabaseURL(parsed.engine, url if target is None else target)
    assert parsed.engine == engine


REFUSED = [
    pytest.param("mysql://ops@db.example/app", "mysql://", id="mysql"),
    pytest.param("redis://localhost", "redis://", id="redis"),
    pytest.param("postgresql+psycopg2://ops@db/app", "postgresql+psycopg2://", id="sqlalchemy-pg"),
    pytest.param("sqlite+pysqlite:///tokens.db", "sqlite+pysqlite://", id="sqlalchemy-sqlite"),
    pytest.param("MEMORY://", "MEMORY://", id="upper-case-scheme"),
    pytest.param("memory://something", "memory:// takes nothing", id="memory-with-a-name"),
    pytest.param("memory:", "starts with memory:", id="memory-colon"),
    pytest.param("memory:/", "starts with memory:", id="memory-one-slash"),
    pytest.param("sqlite:tokens.db", "starts with sqlite:", id="sqlite-no-slashes"),
    pytest.param("postgresql:ops@db/app", "starts with postgresql:", id="postgres-no-slashes"),
    pytest.param("http:/x", "starts with http:", id="scheme-one-slash"),
    pytest.param("sqlite://", "sqlite:///relative/path", id="sqlite-nothing"),
    pytest.param("sqlite:///", "needs a path", id="sqlite-empty-path"),
    pytest.param("sqlite://host/tokens.db", "names no host", id="sqlite-host"),
    pytest.param("sqlite:///tokens.db?mode=ro", "no query options", id="sqlite-query"),
    pytest.param("./data://tokens.db", "neither a URL nor a file path", id="inner-slashes"),
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param(" tokens.db", "whitespace", id="leading-space"),
    pytest.param("postgresql://db/app\n", "whitespace", id="trailing-newline"),
    pytest.param("tokens\ud800.db", "lone surrogate", id="surrogate"),
    pytest.param("postgresql://db/\udcff", "lone surrogate", id="surrogate-in-url"),
    pytest.param("tokens\x00.db", "NUL", id="nul"),
    pytest.param(None, "must be a string", id="none"),
    pytest.param(b"tokens.db", "must be a string", id="bytes"),
    pytest.param(Path("tokens.db"), "must be a string", id="path"),
    pytest.param(5, "must be a string", id="int"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_refused_urls_say_what_is_accepted(url: object, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_database_url(url)

    assert message in str(refused.value)
    if "must be a string" in message or "scheme" in str(refused.value):
        assert "postgresql://..., postgres://..., sqlite:///relative/path" in str(refused.value)


def test_a_refused_url_is_refused_by_open_too_and_creates_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("mysql://x", "memory://x", "memory:", "sqlite:tokens.db"):
        with pytest.raises(InvalidInput):
            TokenLedger.open(url)

    assert list(tmp_path.iterdir()) == []


def test_the_repr_hides_a_password() -> None:
    parsed = parse_database_url("postgresql://ops:s3cret@db.example/app")

    assert "s3cret" not in repr(parsed)
    assert parsed.target == "postgresql://ops:s3cret@db.example/app"  # psycopg gets it whole


def test_memory_url_opens_an_in_process_ledger(clock: MovableClock) -> None:
    berlin = MonthlyResetPolicy(timezone="Europe/Berlin")

    with TokenLedger.open("memory://", policy=berlin, clock=clock) as ledger:
        ledger.open_account("u1", monthly_limit=5)
        assert isinstance(ledger.repository, MemoryRepository)
        assert (ledger.policy, ledger.now()) == (berlin, clock())


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:", ":memory:"])
def test_sqlite_memory_urls_open_sqlite_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)

    with TokenLedger.open(url) as ledger:
        ledger.open_account("u1", monthly_limit=5)
        assert isinstance(ledger.repository, SQLiteRepository)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["path", "sqlite:///relative", "sqlite:////absolute"])
def test_a_sqlite_file_is_made_where_the_url_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    url = {
        "path": str(tmp_path / "data" / "x.db"),
        "sqlite:///relative": "sqlite:///data/x.db",
        "sqlite:////absolute": f"sqlite:///{tmp_path / 'data' / 'x.db'}",
    }[spelling]

    with TokenLedger.open(url) as ledger:
        ledger.open_account("u1", monthly_limit=5)
        assert isinstance(ledger.repository, SQLiteRepository)

    assert (tmp_path / "data" / "x.db").is_file()
    with TokenLedger.open(url, create=False) as reopened:
        assert reopened.status("u1").monthly_limit == 5
    with TokenLedger.sqlite(tmp_path / "data" / "x.db") as same_file:
        assert same_file.status("u1").monthly_limit == 5


@pytest.mark.parametrize("spelling", ["path", "sqlite:///relative", "sqlite:////absolute"])
def test_create_false_refuses_a_missing_sqlite_file_and_makes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    monkeypatch.chdir(tmp_path)
    url = {
        "path": str(tmp_path / "missing.db"),
        "sqlite:///relative": "sqlite:///missing.db",
        "sqlite:////absolute": f"sqlite:///{tmp_path / 'missing.db'}",
    }[spelling]

    with pytest.raises(DatabaseNotFound, match="no SQLite file at") as refused:
        TokenLedger.open(url, create=False)

    assert isinstance(refused.value, InvalidInput)
    assert list(tmp_path.iterdir()) == []


def test_create_false_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFound):
        TokenLedger.open(str(tmp_path), create=False)


@pytest.mark.parametrize("url", ["memory://", "sqlite:///:memory:", ":memory:"])
def test_create_false_refuses_an_in_memory_ledger(url: str) -> None:
    """Such a ledger is always new and empty: exactly what ``create=False`` guards against."""
    with pytest.raises(DatabaseNotFound, match="always new and empty"):
        TokenLedger.open(url, create=False)


def test_importing_and_opening_sqlite_or_memory_loads_no_postgres_driver(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import token_ledger
        from token_ledger.database_url import parse_database_url
        parse_database_url("postgresql://ops@db.example/app")
        token_ledger.TokenLedger.open("memory://").close()
        token_ledger.TokenLedger.open({str(tmp_path / "x.db")!r}).close()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg_pool"))
        print(loaded, "token_ledger.postgres" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "[] False"


@pytest.mark.postgres
def test_a_postgres_url_opens_postgresql(postgres_database: Database, clock: MovableClock) -> None:
    with postgres_database.new_database() as conninfo:
        url = as_url(conninfo)
        assert url.startswith("postgresql://")
        with TokenLedger.open(url, create=False, clock=clock) as ledger:
            assert isinstance(ledger.repository, PostgresRepository)
            ledger.open_account("u1", monthly_limit=7)
        # the other spelling reaches the same database
        with TokenLedger.open("postgres://" + url.removeprefix("postgresql://")) as again:
            assert again.status("u1").monthly_limit == 7
