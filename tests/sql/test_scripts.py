"""The scripts as text: package data, names quoted, nothing left to fill in."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from token_ledger import InvalidInput
from token_ledger.cli import cli
from token_ledger.sql import (
    MIGRATION_LOCK_KEY,
    NOTIFICATION_LOCK_KEY,
    postgres_script,
    sqlite_script,
)

SEED_NAMES = (
    "user_tokens_with_auto_reset",
    "auto_monthly_reset_trigger_insert",
    "auto_monthly_reset_trigger_update",
)


def test_both_scripts_create_the_seeds_view_and_triggers() -> None:
    for script in (postgres_script(), sqlite_script()):
        for name in SEED_NAMES:
            assert re.search(rf"CREATE (OR REPLACE )?(VIEW|TRIGGER) (\S+\.)?{name}\b", script)


def test_the_postgres_script_creates_the_seeds_functions_in_the_schema() -> None:
    script = postgres_script("billing", "Europe/Berlin")

    for name in (
        "check_and_reset_monthly_tokens",
        "auto_reset_monthly_tokens",
        "reset_user_tokens_if_needed",
        "deduct_tokens",
    ):
        assert f'CREATE OR REPLACE FUNCTION "billing".{name}(' in script
    assert "SELECT 'Europe/Berlin'::text" in script
    assert "@" not in script  # every placeholder was filled in


def test_a_schema_name_is_quoted_and_never_ends_a_function_body() -> None:
    script = postgres_script('we"ird $$ name')

    assert '"we""ird $$ name".user_tokens' in script
    assert "AS $tl1$" in script
    assert "AS $$" not in script


@pytest.mark.parametrize("schema", ["", "  ", "x" * 64, "é" * 32])
def test_unusable_schema_names_are_refused(schema: str) -> None:
    with pytest.raises(InvalidInput, match="schema"):
        postgres_script(schema)


def test_the_postgres_script_takes_the_migrations_lock_and_no_other() -> None:
    """Printed or installed, the script queues on the one lock the migrations take; its
    deduct_tokens takes the notifications' lock, as the library does, to record one."""
    printed = CliRunner().invoke(cli, ["sql", "postgres", "--schema", "billing"]).stdout

    assert MIGRATION_LOCK_KEY == 0x746F6B656E5F6C67  # what every released version takes
    assert NOTIFICATION_LOCK_KEY == 0x746F6B656E5F6E74
    for script in (postgres_script(), postgres_script("billing", "Europe/Berlin"), printed):
        locks = re.findall(r"pg_\w*advisory\w*\(([^)]*)\)", script)
        assert locks == [str(MIGRATION_LOCK_KEY), str(NOTIFICATION_LOCK_KEY)]
