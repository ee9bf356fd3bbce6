"""The benchmark harness: sizes, the scenario registry, interleaved rounds and the report.

A scenario is a small function registered in a module's :class:`Scenarios`.
It gets a :class:`Context` and returns an :class:`Outcome`, or raises
:class:`Skipped` when what it measures is not available here. Throughputs are compared as
library/raw ratios measured in the same run, round by round, because on a
shared machine absolute numbers say more about the neighbours than about
the code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")

#: The issue's targets: every library/raw throughput ratio, and a bulk reset.
MIN_RATIO = 0.85
RESET_ACCOUNTS = 100_000
RESET_SECONDS = 10.0
#: Operator queries and reads are within this many times the time of the yardstick's SQL.
QUERY_SLOWDOWN = 2.0
#: The bulk reset is within this many times the time of one set-based statement.
RESET_SLOWDOWN = 1.5


@dataclass(frozen=True)
class Size:
    """How much work each scenario does. ``smoke`` only proves that everything runs:
    its figures are too small to judge the targets by."""

    name: str
    rounds: int
    deductions: int
    process_deductions: int
    status_reads: int
    history_rows: int
    stale_accounts: int
    reset_rounds: int
    import_runs: int
    operator_accounts: int = 1_000
    """Accounts (three log entries each) the operator queries are timed on."""


SIZES = {
    "smoke": Size("smoke", 2, 100, 50, 100, 2_000, 500, 1, 2, 1_000),
    "quick": Size("quick", 5, 1_000, 300, 2_000, 1_000_000, 100_000, 1, 5, 100_000),
    "full": Size("full", 9, 3_000, 1_000, 5_000, 1_000_000, 100_000, 3, 11, 1_000_000),
}


class Skipped(Exception):
    """What the scenario measures is not available here; the reason is shown in the table."""


@dataclass(frozen=True)
class Target:
    description: str
    met: bool


@dataclass(frozen=True)
class Outcome:
    """What a scenario measured: figures for machines, and cells for the printed table.

    A key of ``metrics`` contains ``ratio`` exactly when its value is a
    library/raw throughput ratio (higher is better).
    """

    metrics: dict[str, float]
    library: str
    raw: str = ""
    comparison: str = ""
    targets: tuple[Target, ...] = ()


@dataclass(frozen=True)
class Rounds:
    """Two throughputs measured in alternation, one pair per round."""

    first: tuple[float, ...]
    second: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """The median of the per-round ratios: each pair ran back to back, on the same machine."""
        return statistics.median(a / b for a, b in zip(self.first, self.second, strict=True))


def alternate(rounds: int, first: Callable[[str], float], second: Callable[[str], float]) -> Rounds:
    """Run first, second, first, second...; each call gets a unique tag, returns a throughput.

    One warm-up pair runs before and is not counted, so imports, caches and
    the first pages of a file do not count against whichever side runs first.
    """
    first("warmup-first")
    second("warmup-second")
    firsts: list[float] = []
    seconds: list[float] = []
    for number in range(rounds):
        firsts.append(first(f"first-{number}"))
        seconds.append(second(f"second-{number}"))
    return Rounds(tuple(firsts), tuple(seconds))


def alternate_sides(rounds: int, sides: dict[str, Callable[[str], float]]) -> dict[str, Rounds]:
    """Run every side once per round, in turn, after one warm-up round; each side's
    throughputs against the first side's, as :class:`Rounds` (the first side's first)."""
    for name, side in sides.items():
        side(f"warmup-{name}")
    measured: dict[str, list[float]] = {name: [] for name in sides}
    for number in range(rounds):
        for name, side in sides.items():
            measured[name].append(side(f"{name}-{number}"))
    first, *others = sides
    return {
        name: Rounds(tuple(measured[first]), tuple(measured[name])) for name in [first, *others]
    }


def library_against_yardsticks(
    rounds: dict[str, Rounds], unit: str, targets: dict[str, float]
) -> Outcome:
    """The library (the first side of :func:`alternate_sides`) against each other side.

    ``targets`` gives, by side, the least library/side ratio the issue asks for.
    Metrics: ``<side>_per_second`` for each side and ``library_<side>_ratio``.
    """
    library = statistics.median(next(iter(rounds.values())).first)
    metrics = {"library_per_second": library}
    raw_cells = []
    comparisons = []
    met = []
    for name, pair in list(rounds.items())[1:]:
        rate = statistics.median(pair.second)
        metrics[f"{name}_per_second"] = rate
        metrics[f"library_{name}_ratio"] = pair.ratio
        raw_cells.append(f"{name} {rate:,.0f} {unit}")
        comparisons.append(f"{pair.ratio:.2f} ({name})")
        if name in targets:
            met.append(Target(f"library/{name} >= {targets[name]}", pair.ratio >= targets[name]))
    return Outcome(
        metrics=metrics,
        library=f"{library:,.0f} {unit}",
        raw="; ".join(raw_cells),
        comparison="; ".join(comparisons),
        targets=tuple(met),
    )


def timed_against(
    library: Callable[[], float], yardstick: Callable[[], float], rounds: int, what: str
) -> Outcome:
    """Seconds of one library call against seconds of the SQL it is measured by,
    alternating; ``speed_ratio`` is yardstick/library time (library/yardstick throughput)."""
    library()
    yardstick()
    pairs = [(library(), yardstick()) for _ in range(rounds)]
    ratio = statistics.median(y / lib for lib, y in pairs)
    library_seconds = statistics.median(lib for lib, _ in pairs)
    yardstick_seconds = statistics.median(y for _, y in pairs)
    least = 1 / QUERY_SLOWDOWN
    return Outcome(
        metrics={
            "library_seconds": library_seconds,
            "yardstick_seconds": yardstick_seconds,
            "speed_ratio": ratio,
        },
        library=f"{library_seconds * 1000:,.1f} ms",
        raw=f"{yardstick_seconds * 1000:,.1f} ms ({what})",
        comparison=f"{1 / ratio:.2f}x the time",
        targets=(Target(f"<= {QUERY_SLOWDOWN:g}x the time", ratio >= least),),
    )


def library_against_raw(rounds: Rounds, unit: str) -> Outcome:
    """The outcome of library (first) against raw (second) throughputs."""
    library = statistics.median(rounds.first)
    raw = statistics.median(rounds.second)
    return Outcome(
        metrics={
            "library_per_second": library,
            "raw_per_second": raw,
            "library_raw_ratio": rounds.ratio,
        },
        library=f"{library:,.0f} {unit}",
        raw=f"{raw:,.0f} {unit}",
        comparison=f"{rounds.ratio:.2f}",
        targets=(Target(f"library/raw >= {MIN_RATIO}", rounds.ratio >= MIN_RATIO),),
    )


def bulk_reset(accounts: int, seconds: list[float]) -> Outcome:
    """The outcome of resetting ``accounts`` stale accounts, once per entry of ``seconds``."""
    median = statistics.median(seconds)
    limit = RESET_SECONDS * accounts / RESET_ACCOUNTS
    return Outcome(
        metrics={"accounts": accounts, "seconds": median, "accounts_per_second": accounts / median},
        library=f"{median:.2f} s ({accounts / median:,.0f} accounts/s)",
        targets=(Target(f"< {limit:g} s", median < limit),),
    )


def reset_against_statement(accounts: int, pairs: Sequence[tuple[float, float]]) -> Outcome:
    """The bulk reset's outcome (:func:`bulk_reset`) and its speed against one statement."""
    outcome = bulk_reset(accounts, [library for library, _ in pairs])
    ratio = statistics.median(statement / library for library, statement in pairs)
    statement = statistics.median(statement for _, statement in pairs)
    return Outcome(
        metrics={**outcome.metrics, "statement_seconds": statement, "speed_ratio": ratio},
        library=outcome.library,
        raw=f"{statement:.2f} s (one statement)",
        comparison=f"{1 / ratio:.2f}x the time",
        targets=(
            *outcome.targets,
            Target(f"<= {RESET_SLOWDOWN:g}x the time", ratio >= 1 / RESET_SLOWDOWN),
        ),
    )


def seconds_of(call: Callable[[], object], times: int = 3) -> Callable[[], float]:
    """A side of :func:`timed_against`: the mean seconds of ``times`` calls."""

    def timed() -> float:
        start = time.perf_counter()
        for _ in range(times):
            call()
        return (time.perf_counter() - start) / times

    return timed


@dataclass
class Context:
    """What a scenario may use: the size, a scratch directory, and resources shared by the run."""

    size: Size
    workdir: Path
    stack: ExitStack
    _shared: dict[object, object] = field(default_factory=dict, init=False)

    def directory(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))

    def shared(self, factory: Callable[[Context], T]) -> T:
        """``factory(self)`` made once per run (a database server, say) and reused after."""
        if factory not in self._shared:
            self._shared[factory] = factory(self)
        return cast(T, self._shared[factory])


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[Context], Outcome]

    def heading(self, size: Size) -> str:
        """The title with the size's figures filled in: ``{stale_accounts:,}`` and the like."""
        return self.title.format_map(dataclasses.asdict(size))


ScenarioFunction = Callable[[Context], Outcome]


class Scenarios:
    """The scenarios of one module, in the order they are defined."""

    def __init__(self) -> None:
        self._scenarios: list[Scenario] = []

    def __iter__(self) -> Iterator[Scenario]:
        return iter(self._scenarios)

    def __call__(self, name: str, title: str) -> Callable[[ScenarioFunction], ScenarioFunction]:
        """Register a scenario as ``name`` (its JSON key) with ``title`` (its table row)."""

        def register(run: ScenarioFunction) -> ScenarioFunction:
            self._scenarios.append(Scenario(name, title, run))
            return run

        return register


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    outcome: Outcome | None = None
    skipped: str | None = None
    error: str | None = None


def run_all(scenarios: list[Scenario], size: Size, log: Callable[[str], None]) -> list[Result]:
    """Run the scenarios in order; one failing does not stop the others."""
    results = []
    with tempfile.TemporaryDirectory(prefix="token-ledger-bench-") as workdir, ExitStack() as stack:
        context = Context(size, Path(workdir), stack)
        for entry in scenarios:
            log(f"running {entry.name} ...")
            try:
                results.append(Result(entry, outcome=entry.run(context)))
            except Skipped as skipped:
                results.append(Result(entry, skipped=str(skipped)))
            except Exception as error:
                traceback.print_exc()
                first_line = next(iter(str(error).splitlines()), "")
                results.append(Result(entry, error=f"{type(error).__name__}: {first_line}"))
    return results


def machine() -> dict[str, Any]:
    """Where the numbers were measured: they mean little without it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def to_json(size: Size, results: list[Result]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for result in results:
        entry: dict[str, Any] = {"title": result.scenario.heading(size)}
        if result.outcome is not None:
            entry["metrics"] = result.outcome.metrics
            entry["targets"] = [
                {"description": t.description, "met": t.met} for t in result.outcome.targets
            ]
        if result.skipped is not None:
            entry["skipped"] = result.skipped
        if result.error is not None:
            entry["error"] = result.error
        scenarios[result.scenario.name] = entry
    return {"size": dataclasses.asdict(size), "machine": machine(), "scenarios": scenarios}


def table(results: list[Result], size: Size) -> str:
    """A Markdown table, to read in a terminal or paste into the README."""
    header = ("scenario", "library", "raw", "library/raw", "target")
    rows = []
    for result in results:
        title = result.scenario.heading(size)
        if result.outcome is not None:
            outcome = result.outcome
            targets = ", ".join(
                f"{t.description} {'met' if t.met else 'MISSED'}" for t in outcome.targets
            )
            rows.append((title, outcome.library, outcome.raw, outcome.comparison, targets))
        elif result.skipped is not None:
            rows.append((title, f"skipped: {result.skipped}", "", "", ""))
        else:
            rows.append((title, f"error: {result.error}", "", "", ""))
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: Iterable[str]) -> str:
        return f"| {' | '.join(cells)} |"

    return "\n".join(
        [
            line(cell.ljust(width) for cell, width in zip(header, widths, strict=True)),
            line("-" * width for width in widths),
            *(line(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows),
        ]
    )


def write_json(path: Path, size: Size, results: list[Result]) -> None:
    path.write_text(json.dumps(to_json(size, results), indent=2) + "\n", encoding="utf-8")
