"""Benchmarks of token-ledger: ``python benchmarks/run.py [--quick | --smoke] [--json PATH]``.

Prints a Markdown table of throughputs and of library/raw ratios measured in
the same run. ``--quick`` takes about a minute; ``--smoke`` only checks that
every scenario runs. ``--json PATH`` writes the figures for machines: a key
containing ``ratio`` holds a library/raw throughput ratio (higher is
better), and no other key contains that word. The exit status is 1 when a
scenario failed, not when a target was missed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import async_scenarios
import postgres_scenarios
import python_scenarios
import sqlite_scenarios
from harness import SIZES, Scenario, machine, run_all, table, write_json

SCENARIOS: list[Scenario] = [
    *sqlite_scenarios.scenarios,
    *postgres_scenarios.scenarios,
    *async_scenarios.scenarios,
    *python_scenarios.scenarios,
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", dest="size", action="store_const", const="quick", help="about a minute"
    )
    size.add_argument(
        "--smoke",
        dest="size",
        action="store_const",
        const="smoke",
        help="a few seconds, no targets",
    )
    parser.set_defaults(size="full")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--only",
        action="append",
        choices=[entry.name for entry in SCENARIOS],
        metavar="NAME",
        help="run only this scenario (repeatable): " + ", ".join(e.name for e in SCENARIOS),
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse(argv)
    size = SIZES[arguments.size]
    selected = [entry for entry in SCENARIOS if not arguments.only or entry.name in arguments.only]
    results = run_all(selected, size, lambda line: print(line, file=sys.stderr))
    host = machine()
    print(
        f"token-ledger benchmarks, size {size.name}: {host['cpu_count']} x {host['cpu']},"
        f" {host['system']}, Python {host['python']}, SQLite {host['sqlite']}\n"
    )
    print(table(results, size))
    if arguments.json is not None:
        write_json(arguments.json, size, results)
    return 1 if any(result.error is not None for result in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
