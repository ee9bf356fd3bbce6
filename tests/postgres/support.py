"""Helpers shared by the PostgreSQL tests: watching the server, counting statements."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from types import TracebackType
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


class EndHoldingProxy:
    """A TCP proxy to the server that forwards every byte, but not the end of the stream:
    a connection the server closed (its FATAL farewell forwarded) stays open to the client
    until the client sends something more, which closes it. A slow farewell, made
    deterministic: the message has arrived, the end has not."""

    def __init__(self, database: Database) -> None:
        parts = psycopg.conninfo.conninfo_to_dict(database.url)
        host, port = str(parts.get("host") or "localhost"), int(parts.get("port") or 5432)
        self._upstream: tuple[int, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._ended = threading.Semaphore(0)
        self.conninfo = psycopg.conninfo.make_conninfo(
            database.url, host="127.0.0.1", port=self._listener.getsockname()[1]
        )
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            family, address = self._upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            left = threading.Event()  # the client closed first
            for pump in ((server, client, left, False), (client, server, left, True)):
                threading.Thread(target=self._pump, args=pump, daemon=True).start()

    def wait_for_farewells(self, count: int) -> None:
        """Wait until ``count`` more connections the server closed have had every byte of
        theirs forwarded, the farewell included."""
        for _ in range(count):
            if not self._ended.acquire(timeout=PATIENCE):
                raise AssertionError("the server closed no connection")

    def _pump(
        self, source: socket.socket, target: socket.socket, left: threading.Event, to_server: bool
    ) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                if to_server:  # the client is done: so is the server's side
                    left.set()
                    target.close()
                elif not left.is_set():  # the server closed: the client is not told
                    self._ended.release()
                return
            try:
                target.sendall(data)
            except OSError:  # the server is gone: now the client hears of it
                source.close()
                return

    def __enter__(self) -> EndHoldingProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._listener.close()
