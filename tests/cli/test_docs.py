"""The README documents every command and every option of the command line.

As in sqlite-utils: a command or option added without its documentation fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from token_ledger.cli import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def command_line_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Command line\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


COMMANDS = list(commands(cli))
SUBCOMMANDS = COMMANDS[1:]  # all but token-ledger itself


@pytest.mark.parametrize(("path", "command"), SUBCOMMANDS, ids=[p for p, _ in SUBCOMMANDS])
def test_every_command_has_a_row_in_the_command_table(path: str, command: click.Command) -> None:
    row = re.compile(rf"^\| `{re.escape(path)}[ `]", re.MULTILINE)

    assert row.search(command_line_section()), path


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[p or "token-ledger" for p, _ in COMMANDS]
)
def test_every_option_is_documented(path: str, command: click.Command) -> None:
    section = command_line_section()
    options = [
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--")
    ]
    missing = [name for name in options if not re.search(rf"{re.escape(name)}\b", section)]

    assert missing == [], f"{path or 'token-ledger'}: {missing}"
