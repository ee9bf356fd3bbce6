"""Sixteen processes spending as members of one organisation, and moving them between
organisations: no budget on any path overspent, no deadlock surfaced, every share where
it belongs."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

import organisation_workers as org
from postgres import workers
from postgres.conftest import WORKERS
from postgres.support import on_every_worker
from postgres_server import Database
from token_ledger import TokenLedger

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
OPERATIONS = 1600


def deadlocks(database: Database) -> int:
    """The deadlocks the server has detected in the database so far, retried or not
    (reported, not judged: a server shared with other runs counts theirs too)."""
    with database.connect() as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_sixteen_processes_spending_as_members_of_one_organisation_never_overspend(
    postgres_database: Database, postgres_schema: str, worker_processes: ProcessPoolExecutor
) -> None:
    budgets = org.budgets_for(OPERATIONS)
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        org.open_organisation(ledger, budgets)
    deadlocks_before = deadlocks(postgres_database)

    outcomes = on_every_worker(
        worker_processes,
        workers.in_process,
        [
            (postgres_database.url, postgres_schema, org.churn, operations, seed)
            for seed, operations in enumerate(org.deal(OPERATIONS, WORKERS))
        ],
    )

    detected = deadlocks(postgres_database) - deadlocks_before
    with TokenLedger.postgres(postgres_database.url, schema=postgres_schema) as ledger:
        summary = org.assert_organisation_ledger_consistent(ledger, budgets, outcomes)
    print(f"{summary}; deadlocks detected by the server {detected}")
