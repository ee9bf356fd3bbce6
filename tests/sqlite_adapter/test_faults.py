"""SQLite failing underneath a write, and files that cannot be in WAL mode, on real files."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from token_ledger import StorageError, TokenLedger
from token_ledger.sqlite import SQLiteRepository
from token_ledger.testing import MovableClock

POISON = """
    CREATE TABLE audit_parent (id INTEGER PRIMARY KEY);
    CREATE TABLE audit_child (
        parent_id INTEGER REFERENCES audit_parent (id) DEFERRABLE INITIALLY DEFERRED
    );
    CREATE TRIGGER poison_commit AFTER INSERT ON token_transactions
    WHEN NEW.feature = 'poison'
    BEGIN
        INSERT INTO audit_child (parent_id) VALUES (-1);
    END;
"""


def test_a_commit_refused_by_a_deferred_foreign_key_leaves_the_repository_usable(
    tmp_path: Path, clock: MovableClock
) -> None:
    """The COMMIT itself fails; nothing of the write remains, not even to this connection."""
    path = tmp_path / "tokens.db"
    repository = SQLiteRepository(path)
    ledger = TokenLedger(repository, clock=clock)
    ledger.open_account("u1", monthly_limit=10)
    ledger.deduct("u1", 2)
    with sqlite3.connect(path) as other:
        other.executescript(POISON)
    other.close()
    repository.db.conn.execute("PRAGMA foreign_keys = ON")
    before = ledger.status("u1")
    history_before = ledger.history("u1")

    with pytest.raises(StorageError) as raised:
        ledger.deduct("u1", 1, feature="poison")

    assert isinstance(raised.value.__cause__, sqlite3.Error)
    assert repository.db.conn.in_transaction is False
    assert ledger.status("u1") == before
    assert ledger.history("u1") == history_before
    assert ledger.reconcile() == []
    assert ledger.deduct("u1", 1).monthly_remaining == 7
    assert ledger.reconcile() == []
    repository.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own, so that filling it disturbs nothing else."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(descriptor)
    return filler


def deduct_until_refused(ledger: TokenLedger, user_id: str) -> tuple[int, StorageError]:
    """Deductions may still fit in pages the WAL file already holds; count those that did."""
    for acknowledged in range(5000):
        try:
            ledger.deduct(user_id, 1)
        except StorageError as error:
            return acknowledged, error
    raise AssertionError("5000 deductions fitted on a full file system")


def test_a_full_disk_fails_a_deduction_cleanly_and_freed_space_lets_the_next_one_in(
    small_tmpfs: Path, clock: MovableClock
) -> None:
    repository = SQLiteRepository(small_tmpfs / "tokens.db")
    ledger = TokenLedger(repository, clock=clock)
    try:
        ledger.open_account("u1", monthly_limit=10**9)
        filler = fill(small_tmpfs)

        acknowledged, error = deduct_until_refused(ledger, "u1")

        assert isinstance(error.__cause__, sqlite3.Error)
        assert repository.db.conn.in_transaction is False
        assert ledger.status("u1").monthly_used == acknowledged
        filler.unlink()
        ledger.deduct("u1", 1)
        assert ledger.status("u1").monthly_used == acknowledged + 1
        assert ledger.reconcile() == []
    finally:
        repository.close()


def test_a_file_that_cannot_be_in_wal_mode_is_refused_at_open(tmp_path: Path) -> None:
    """The ``unix-dotfile`` VFS has no shared memory, so SQLite keeps the file in DELETE mode."""
    path = tmp_path / "tokens.db"
    conn = sqlite3.connect(
        f"file:{path}?vfs=unix-dotfile", uri=True, isolation_level=None, check_same_thread=False
    )

    with pytest.raises(StorageError, match="WAL"):
        SQLiteRepository(conn)

    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0
    conn.close()


def test_a_file_left_in_another_journal_mode_is_switched_to_wal(tmp_path: Path) -> None:
    """A file database in journal mode MEMORY is still a file that other processes read."""
    path = tmp_path / "tokens.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    assert conn.execute("PRAGMA journal_mode = MEMORY").fetchone()[0] == "memory"

    with TokenLedger.sqlite(conn) as ledger:
        ledger.open_account("u1", monthly_limit=5)

    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()


def test_opening_while_another_connection_writes_the_new_file_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    """Switching to WAL upgrades a read lock, which SQLite refuses at once while another writes."""
    path = tmp_path / "tokens.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE app_table (id INTEGER)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO app_table VALUES (1)")
    finish = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    finish.start()
    try:
        with TokenLedger.sqlite(path, busy_timeout=30.0) as ledger:
            ledger.open_account("u1", monthly_limit=5)
            assert ledger.status("u1").monthly_limit == 5
    finally:
        finish.join()
        writer.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert check.execute("SELECT count(*) FROM app_table").fetchone()[0] == 1
    check.close()
