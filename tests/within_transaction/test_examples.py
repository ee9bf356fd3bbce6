"""The SQLAlchemy ORM and Django examples run as a user runs them, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from postgres_server import Database, as_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = {
    "sqlalchemy": EXAMPLES / "sqlalchemy_orm" / "shop.py",
    "django": EXAMPLES / "django_app" / "run.py",
}
EXPECTED = [
    "placed order 1 (summary, 4 tokens): ledger entry 1",
    "refused translation: asked for 20, 6 remaining",
    "neither the order nor its charge is stored",
    "orders: [('summary', 4, 1)]",
    "status: {'monthlyUsed': 4, 'monthlyLimit': 10, 'monthlyRemaining': 6}",
    "reconcile: []",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A token-ledger database URL of a new, empty database."""
    if request.param == "sqlite":
        yield str(tmp_path / "shop.db")
        return
    server: Database = request.getfixturevalue("postgres_database")
    with server.new_database() as conninfo:
        yield as_url(conninfo)


def run(example: str, argument: str, directory: Path) -> str:
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS[example]), argument],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_the_sqlalchemy_orm_example_commits_orders_with_their_tokens(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("postgresql://"):
        url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{database_url}"

    output = run("sqlalchemy", url, tmp_path)

    for line in EXPECTED:
        assert line in output


def test_the_django_example_commits_orders_with_their_tokens_inside_atomic(
    database_url: str, tmp_path: Path
) -> None:
    output = run("django", database_url, tmp_path)

    for line in EXPECTED:
        assert line in output
    assert "last entry, read inside atomic(): 4 tokens, {'order_id': 1}" in output
    assert "outside transaction.atomic(): refused" in output
