"""Scenarios without a database: the in-memory adapter and the cost of ``import token_ledger``."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from baselines import LIMIT, plan
from harness import Context, Outcome, Scenarios, Target
from jobs import library_deduct, throughput
from token_ledger import TokenLedger

scenarios = Scenarios()

#: Memory deductions are fast: this many times the size's count gives rounds long enough to time.
MEMORY_FACTOR = 5

IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import token_ledger
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "psycopg": "psycopg" in sys.modules}))
"""


@scenarios("memory_deductions", "In-memory adapter: deductions")
def memory_deductions(context: Context) -> Outcome:
    user_ids = [f"user-{number}" for number in range(10)]
    ledger = TokenLedger.memory()
    for user_id in user_ids:
        ledger.open_account(user_id, monthly_limit=LIMIT)
    count = context.size.deductions * MEMORY_FACTOR
    deduct = library_deduct(ledger)
    throughput(deduct, plan(user_ids, count, "warmup"))
    rates = [
        throughput(deduct, plan(user_ids, count, f"round-{number}"))
        for number in range(context.size.rounds)
    ]
    rate = statistics.median(rates)
    return Outcome(metrics={"deductions_per_second": rate}, library=f"{rate:,.0f} /s")


def import_once() -> tuple[float, bool]:
    """Seconds to import token_ledger in a fresh interpreter, and whether psycopg came along."""
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
    )
    probe = json.loads(completed.stdout)
    return float(probe["seconds"]), bool(probe["psycopg"])


@scenarios("import_time", "import token_ledger")
def import_time(context: Context) -> Outcome:
    import_once()  # compiles the bytecode, as any later run would find it
    runs = [import_once() for _ in range(context.size.import_runs)]
    milliseconds = statistics.median(seconds for seconds, _ in runs) * 1000
    without_psycopg = not any(psycopg for _, psycopg in runs)
    return Outcome(
        metrics={"milliseconds": milliseconds},
        library=f"{milliseconds:.0f} ms",
        targets=(Target("does not import psycopg", without_psycopg),),
    )
