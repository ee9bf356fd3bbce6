"""The benchmarks run, and report in the promised shape; their timings are never judged here."""

from __future__ import annotations

import importlib
import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from token_ledger import TokenLedger

pytestmark = pytest.mark.slow
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCENARIOS = {
    "sqlite_1_thread",
    "sqlite_4_processes_distinct",
    "sqlite_4_processes_hot",
    "sqlite_4_processes_organisation",
    "sqlite_status_history",
    "sqlite_reset_all_stale",
    "sqlite_health",
    "sqlite_alerts",
    "sqlite_reconcile",
    "postgres_1_connection",
    "postgres_8_connections_distinct",
    "postgres_8_connections_hot",
    "postgres_8_connections_organisation",
    "postgres_reset_all_stale",
    "postgres_reads",
    "postgres_health",
    "postgres_alerts",
    "postgres_reconcile",
    "postgres_async_8_tasks_distinct",
    "postgres_async_8_tasks_hot",
    "memory_deductions",
    "import_time",
}
RATIOS = {
    "library_raw_ratio",
    "library_raw_best_ratio",
    "async_sync_ratio",
    "status_select_ratio",
    "history_select_ratio",
    "speed_ratio",
}
COMPARISON = {"library_per_second", "raw_per_second", "library_raw_ratio"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """The printed table and the JSON of one ``--smoke`` run."""
    path = tmp_path_factory.mktemp("benchmarks") / "results.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(path.read_text(encoding="utf-8"))


def all_keys(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from all_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_keys(item)


def test_every_scenario_reports_figures_or_why_it_was_skipped(
    smoke_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = smoke_run

    assert set(report["scenarios"]) == SCENARIOS
    for name, entry in report["scenarios"].items():
        assert "error" not in entry, name
        assert ("metrics" in entry) != ("skipped" in entry), name


def test_postgres_scenarios_run_on_a_real_server(
    smoke_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = smoke_run

    postgres = {name: e for name, e in report["scenarios"].items() if name.startswith("postgres")}
    assert postgres
    deductions_and_resets = {
        n: e for n, e in postgres.items() if n != "postgres_sql_function_reset"
    }
    assert all("metrics" in entry for entry in deductions_and_resets.values()), postgres


def test_ratio_names_exactly_the_library_raw_throughput_ratios(
    smoke_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = smoke_run

    ratios = {key for key in all_keys(report) if "ratio" in key}
    assert "library_raw_ratio" in ratios
    assert ratios <= {
        "library_raw_ratio",
        "async_sync_ratio",
        "library_raw_best_ratio",  # PostgreSQL deductions: against the one-statement CTE
        "status_select_ratio",  # reads against a plain SELECT
        "history_select_ratio",
        "speed_ratio",  # operator queries and the bulk reset: yardstick time / library time
    }
    for name, entry in report["scenarios"].items():
        metrics = set(entry.get("metrics", {}))
        has_both_throughputs = metrics >= {"library_per_second", "raw_per_second"}
        assert ("library_raw_ratio" in metrics) == has_both_throughputs, name
    for name in ("sqlite_1_thread", "sqlite_4_processes_distinct", "sqlite_4_processes_hot"):
        assert set(report["scenarios"][name]["metrics"]) >= COMPARISON


def test_every_figure_is_a_positive_number(smoke_run: tuple[str, dict[str, Any]]) -> None:
    _, report = smoke_run

    for name, entry in report["scenarios"].items():
        for key, value in entry.get("metrics", {}).items():
            assert type(value) in (int, float), (name, key)
            assert math.isfinite(value), (name, key)
            assert value > 0, (name, key)
        for target in entry.get("targets", []):
            assert isinstance(target["met"], bool), name
    assert report["size"]["name"] == "smoke"
    assert set(report["machine"]) == {"cpu_count", "cpu", "system", "python", "sqlite"}


@pytest.fixture
def benchmark_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Imports a module of ``benchmarks/``, which is a directory of scripts, not a package."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


def test_the_raw_sqlite_baseline_writes_what_the_library_writes(
    tmp_path: Path, benchmark_module: Any
) -> None:
    """Same pragmas, same account update, same log row: only then is library/raw a fair ratio."""
    baselines = benchmark_module("baselines")
    jobs = benchmark_module("jobs")
    path = tmp_path / "ledger.db"
    with TokenLedger.sqlite(path) as ledger:
        for user_id in ("library", "raw"):
            ledger.open_account(user_id, monthly_limit=baselines.LIMIT)
        jobs.library_deduct(ledger)(baselines.plan(["library"], 1, "library")[0])
        library_pragmas = pragmas(ledger.repository.db.conn)
    raw = baselines.RawSQLite(path)
    try:
        raw.deduct(baselines.plan(["raw"], 1, "raw")[0])
        raw_pragmas = pragmas(raw.conn)
    finally:
        raw.close()

    assert raw_pragmas == library_pragmas
    assert written(path, "raw") == written(path, "library")


def test_the_raw_member_baseline_writes_what_the_library_writes(
    tmp_path: Path, benchmark_module: Any
) -> None:
    """A member's deduction by hand: both rows, the member's entry and the organisation's
    entry naming it, as the library writes them."""
    baselines = benchmark_module("baselines")
    jobs = benchmark_module("jobs")
    path = tmp_path / "ledger.db"
    with TokenLedger.sqlite(path) as ledger:
        ledger.open_account("org", monthly_limit=baselines.LIMIT)
        for user_id in ("library", "raw"):
            ledger.open_account(user_id, monthly_limit=baselines.LIMIT, organisation_id="org")
        jobs.library_deduct(ledger)(baselines.plan(["library"], 1, "library")[0])
    raw = baselines.RawSQLiteMember(path)
    try:
        raw.deduct(baselines.plan(["raw"], 1, "raw")[0])
    finally:
        raw.close()

    assert written(path, "raw") == written(path, "library")
    assert len(shares(path, "raw")) == 1
    assert shares(path, "raw") == shares(path, "library")
    with TokenLedger.sqlite(path) as ledger:
        assert ledger.get_account("org").monthly_tokens_used == 2
        org = ledger.history("org")
    assert [entry.balance_after for entry in org] == [baselines.LIMIT - 2, baselines.LIMIT - 1]


def shares(path: Path, member: str) -> list[tuple[object, ...]]:
    """The organisation's entry of the member's deduction (the one naming the member's
    entry), less what differs by nature: the member's name in its context, its balance."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT s.operation_type, s.amount, s.success, s.feature,"
            " json_extract(s.operation_context, '$.member') = m.user_id,"
            " json_object('member', 'x') = json_set(s.operation_context, '$.member', 'x'),"
            " s.created_at = m.created_at, s.idempotency_key"
            " FROM token_transactions AS s JOIN token_transactions AS m"
            " ON m.id = s.member_entry_id WHERE s.user_id = 'org' AND m.user_id = ?",
            (member,),
        ).fetchall()
    finally:
        conn.close()


def pragmas(conn: sqlite3.Connection) -> list[object]:
    return [
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "busy_timeout")
    ]


def written(path: Path, user_id: str) -> list[tuple[object, ...]]:
    """What a deduction stored for ``user_id``, less what differs by nature (ids, keys, times)."""
    conn = sqlite3.connect(path)
    try:
        account = conn.execute(
            "SELECT monthly_tokens_used, length(updated_at) FROM user_tokens WHERE user_id = ?",
            (user_id,),
        ).fetchall()
        entries = conn.execute(
            "SELECT operation_type, amount, balance_after, success, feature, operation_context,"
            " length(created_at), idempotency_key IS NOT NULL"
            " FROM token_transactions WHERE user_id = ?",
            (user_id,),
        ).fetchall()
    finally:
        conn.close()
    return [*account, *entries]
