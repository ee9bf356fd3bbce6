"""Eight processes on one SQLite file spending as members of one organisation, and moving
them between organisations: no budget on any path overspent, every share where it belongs."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import organisation_workers as org
from token_ledger import TokenLedger

pytestmark = pytest.mark.slow
PROCESSES = 8
OPERATIONS = 800


def test_eight_processes_spending_as_members_of_one_organisation_never_overspend(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ledger.db")
    budgets = org.budgets_for(OPERATIONS)
    with TokenLedger.sqlite(path) as ledger:
        org.open_organisation(ledger, budgets)
    start = time.time() + 2.0  # after every process has opened the file

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as pool:
        outcomes = list(
            pool.map(
                org.sqlite_churn,
                [path] * PROCESSES,
                org.deal(OPERATIONS, PROCESSES),
                range(PROCESSES),
                [start] * PROCESSES,
            )
        )

    with TokenLedger.sqlite(path) as ledger:
        summary = org.assert_organisation_ledger_consistent(ledger, budgets, outcomes)
    print(summary)
