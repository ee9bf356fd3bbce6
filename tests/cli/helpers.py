"""What the command-line tests share besides fixtures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from click.testing import Result

from token_ledger import Clock, TokenLedger, system_clock


@attrs.frozen
class LedgerDatabase:
    """A database as ``--db`` names it, and as the test opens it through the library."""

    url: str
    opener: Callable[[str, Clock], TokenLedger]

    def open(self, clock: Clock = system_clock) -> TokenLedger:
        return self.opener(self.url, clock)


class Run(Protocol):
    """``token-ledger --db <the test's database> ARGS`` in click's runner."""

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result: ...


def assert_error(result: Result, exit_code: int, message: str) -> None:
    """One line on stderr, ``Error: ...`` (so no traceback), and nothing on stdout."""
    assert (result.exit_code, result.stdout) == (exit_code, "")
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
