"""Eight processes on one SQLite file racing across thresholds: each crossing recorded once."""

from __future__ import annotations

import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import workers
from notification_checks import DEFAULT_KEYS, DEFAULTS, assert_each_crossing_recorded_once
from token_ledger import Threshold, TokenLedger

pytestmark = pytest.mark.slow
PROCESSES = 8
LIMITS = {"hot": 120, "own": 120, **{f"user-{n}": 20 for n in range(6)}}


def test_eight_processes_racing_across_thresholds_record_each_crossing_once(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "ledger.db")
    with TokenLedger.sqlite(path, thresholds=DEFAULTS) as ledger:
        for user_id, limit in LIMITS.items():
            ledger.open_account(user_id, monthly_limit=limit)
        ledger.set_thresholds("own", [Threshold(50), Threshold(90)])  # the full path
        ledger.deduct("hot", 90)  # 75 %: the race starts just below 80 %
    rng = random.Random(8)
    asks = [
        (user_id, rng.randint(1, 5))
        for user_id, limit in LIMITS.items()
        for _ in range(limit if user_id != "hot" else 30)  # three times what is left
    ]
    # As many 1-token asks as each account has left: whatever order the processes run
    # in, every account then ends with nothing left (were any left, each of those asks
    # would have succeeded and spent it), so every threshold is crossed exactly once.
    asks += [
        (user_id, 1)
        for user_id, limit in LIMITS.items()
        for _ in range(limit if user_id != "hot" else 30)
    ]
    rng.shuffle(asks)
    start = time.time() + 2.0  # after every process has opened the file

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as pool:
        surprises = list(
            pool.map(
                workers.spend_with_thresholds,
                [path] * PROCESSES,
                [DEFAULT_KEYS] * PROCESSES,
                [asks[n::PROCESSES] for n in range(PROCESSES)],
                [start] * PROCESSES,
            )
        )

    assert [s for found in surprises for s in found] == []
    with TokenLedger.sqlite(path) as ledger:
        assert assert_each_crossing_recorded_once(ledger, LIMITS) == 3 * 7 + 2
        assert ledger.reconcile() == []
