"""The ``token-ledger`` command line: a thin shell over :class:`~token_ledger.TokenLedger`.

Each command is one library call (or a loop of them) and some formatting, so
the command line and an application that imports token-ledger apply exactly
the same rules. Exit status: 0 done, 1 the ledger refused or failed, 2 the
command line is wrong, 3 ``alerts`` found a threshold crossed. Errors are one
line on stderr, never a traceback: cron mail and CI logs stay readable.

The rooms, each small enough to read at one sitting:

- :mod:`~token_ledger.cli.root`: the group ``token-ledger``, its options, opening the
  ledger, and turning errors into one line and an exit status;
- :mod:`~token_ledger.cli.values`: instants, durations and JSON typed on the command line;
- :mod:`~token_ledger.cli.output`: ``--json``, and tables in ``--fmt``;
- :mod:`~token_ledger.cli.accounts`: one user's account, ``status``, ``deduct``, ``grant``,
  ``refund``;
- :mod:`~token_ledger.cli.operations`: ``init``, ``reset`` and the operator's checklist;
- :mod:`~token_ledger.cli.entries`: the log, ``history`` and ``export``;
- :mod:`~token_ledger.cli.notices`: threshold notifications;
- :mod:`~token_ledger.cli.usage`: ``usage``, the report of tokens spent;
- :mod:`~token_ledger.cli.sql`: the optional SQL.

This module imports the command modules, which register their commands on the root group.
``import token_ledger`` never imports this package, so applications do not pay for click.
"""

from __future__ import annotations

from token_ledger.cli import (  # noqa: F401 - register commands
    accounts,
    entries,
    notices,
    operations,
    sql,
    usage,
)
from token_ledger.cli.entries import ENTRY_COLUMNS, EXPORT_PAGE_SIZE
from token_ledger.cli.root import cli, main

__all__ = ["ENTRY_COLUMNS", "EXPORT_PAGE_SIZE", "cli", "main"]
