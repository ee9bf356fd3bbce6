"""Many processes on one SQLite file: no overspend, no lost or doubled deduction, no corruption."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import workers
from token_ledger import OperationType, TokenLedger

pytestmark = pytest.mark.slow
PROCESSES = 8
ROUNDS = 40
MEAN_AMOUNT = 25.5


def run_in_processes(function: object, *argument_lists: list[object]) -> list[object]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as pool:
        return list(pool.map(function, *argument_lists))  # type: ignore[call-overload]


def assert_usage_matches_the_log(ledger: TokenLedger, user_id: str) -> int:
    account = ledger.get_account(user_id)
    logged = ledger.history(
        user_id, operation_type=OperationType.DEDUCT, success=True, limit=10_000
    )
    assert account.monthly_tokens_used <= account.monthly_limit
    assert account.monthly_tokens_used == sum(entry.amount for entry in logged)
    return account.monthly_tokens_used


@pytest.mark.parametrize("accounts", [1, 16], ids=["one-hot-account", "many-accounts"])
def test_eight_processes_asking_for_three_times_the_limit_never_overspend(
    tmp_path: Path, accounts: int
) -> None:
    path = str(tmp_path / "ledger.db")
    user_ids = [f"user-{n}" for n in range(accounts)]
    demand = PROCESSES * ROUNDS * MEAN_AMOUNT
    with TokenLedger.sqlite(path) as ledger:
        for user_id in user_ids:
            ledger.open_account(user_id, monthly_limit=int(demand / 3 / accounts))

    outcomes = run_in_processes(
        workers.spend_randomly,
        [path] * PROCESSES,
        [user_ids] * PROCESSES,
        [ROUNDS] * PROCESSES,
        list(range(PROCESSES)),
    )

    acknowledged = [ack for acks, _ in outcomes for ack in acks]  # type: ignore[misc]
    surprises = [error for _, errors in outcomes for error in errors]  # type: ignore[misc]
    assert surprises == []
    with TokenLedger.sqlite(path) as ledger:
        for user_id in user_ids:
            used = assert_usage_matches_the_log(ledger, user_id)
            assert used == sum(amount for _, user, amount in acknowledged if user == user_id)
            assert used > ledger.get_account(user_id).monthly_limit * 0.9
        logged_ids = {entry.id for entry in ledger.history(success=True, limit=10_000)}
    assert {entry_id for entry_id, _, _ in acknowledged} == logged_ids


def test_retries_with_the_same_keys_across_processes_apply_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    keys = [f"request-{n}" for n in range(30)]
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("shared", monthly_limit=1000)

    outcomes = run_in_processes(
        workers.retry_keys, [path] * PROCESSES, ["shared"] * PROCESSES, [keys] * PROCESSES
    )

    assert all(outcome == outcomes[0] for outcome in outcomes)
    with TokenLedger.sqlite(path) as ledger:
        assert assert_usage_matches_the_log(ledger, "shared") == len(keys)


def wait_for_lines(path: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path.name} did not reach {count} acknowledgements")


def test_processes_killed_mid_deduction_lose_nothing_acknowledged(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("hot", monthly_limit=10**12)
    context = multiprocessing.get_context("spawn")
    ack_files = [tmp_path / f"acks-{n}.txt" for n in range(4)]
    processes = [
        context.Process(target=workers.spend_until_killed, args=(path, "hot", str(ack_file)))
        for ack_file in ack_files
    ]
    for process in processes:
        process.start()
    for number, (process, ack_file) in enumerate(zip(processes, ack_files, strict=True)):
        wait_for_lines(ack_file, 50 + 25 * number)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    acknowledged = {int(line) for f in ack_files for line in f.read_text().split()}
    with TokenLedger.sqlite(path) as ledger:
        logged = {entry.id for entry in ledger.history("hot", limit=10_000)}
        assert acknowledged <= logged
        assert_usage_matches_the_log(ledger, "hot")


def test_processes_creating_the_same_new_database_at_once_agree(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")

    limits = run_in_processes(workers.open_fresh, [path] * PROCESSES)

    assert limits == [10] * PROCESSES
    with sqlite3.connect(path) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM _sqlite_migrations")]
    assert len(names) == len(set(names))
