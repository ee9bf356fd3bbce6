"""Helpers shared by the PostgreSQL tests: watching the server, counting statements."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import psycopg

from postgres_server import Database

T = TypeVar("T")
PATIENCE = 60.0


def counting_cursor() -> type[psycopg.Cursor[Any]]:
    """A cursor class that records every statement sent through it, for set-based checks."""

    class CountingCursor(psycopg.Cursor[Any]):
        statements: list[str] = []  # noqa: RUF012 - one list per class made here

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            if isinstance(query, bytes):  # statements the adapter renders once
                text = query.decode()
            else:
                text = query if isinstance(query, str) else query.as_string(self)
            self.statements.append(text)
            return super().execute(query, params, **kwargs)

    return CountingCursor


def wait_for_lock_wait(database: Database, application_name: str) -> int:
    """Wait until the session named ``application_name`` waits for a lock; its pid.

    Polling the server is how a test knows that a transaction has reached a
    given statement; no assertion depends on how long that takes.
    """
    deadline = time.monotonic() + PATIENCE
    with database.connect() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = %s AND wait_event_type = 'Lock'",
                (application_name,),
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.01)
    raise AssertionError(f"{application_name} never waited for a lock")


def wait_for_backend_exit(database: Database, pid: int) -> None:
    deadline = time.monotonic() + PATIENCE
    with database.connect() as conn:
        while time.monotonic() < deadline:
            query = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
            if conn.execute(query, (pid,)).fetchone() is None:
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} is still there")


def on_every_worker(
    pool: Executor, function: Callable[..., T], calls: list[tuple[Any, ...]]
) -> list[T]:
    """Run one call per worker (the start line needs them all) and collect the results."""
    futures = [pool.submit(function, *arguments) for arguments in calls]
    return [future.result(timeout=PATIENCE * 2) for future in futures]
