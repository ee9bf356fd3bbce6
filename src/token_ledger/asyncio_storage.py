"""Running the ledger's operations from asyncio: the port an async engine provides, and the
engines that drive a synchronous repository.

An :class:`AsyncRepository` takes the operations of :mod:`token_ledger.operations` (writes)
and :mod:`token_ledger.reads` (reads), written once as sans-I/O generators, and runs them its
own way:

- :class:`~token_ledger.postgres_async.AsyncPostgresRepository` awaits each call on a
  psycopg ``AsyncConnection`` (:func:`token_ledger.operations.run_async`), inside an async
  unit of work retried by :func:`write_with_retries_async`;
- :class:`ThreadedRepository` runs a synchronous repository (SQLite) in a worker thread of
  its own, one thread call per unit of work, with :func:`token_ledger.storage.write_with_retries`
  and :func:`token_ledger.operations.run` unchanged;
- :class:`InlineRepository` runs the in-memory engine in the event loop itself: it performs
  no I/O, so a thread hop would cost more than the work.

Cancellation is safe on each: a unit of work either completes or rolls back as a whole, and
a pooled connection goes back to its pool outside any transaction (:func:`guarded`).

Nothing here imports a database driver.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from token_ledger import operations
from token_ledger.account import TokenAccount
from token_ledger.errors import StorageError, TransientStorageError
from token_ledger.grants import Grant, Reservation
from token_ledger.operations import Operation
from token_ledger.repository import (
    AccountFilter,
    HistoryQuery,
    StaleCutoffs,
    TokenRepository,
    UsageQuery,
)
from token_ledger.storage import (
    RETRY_BASE_DELAY,
    RETRY_MAX_DELAY,
    WRITE_ATTEMPTS,
    write_with_retries,
)
from token_ledger.thresholds import Notification
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageRow

T = TypeVar("T")
W = TypeVar("W")
W_co = TypeVar("W_co", covariant=True)

__all__ = [
    "AsyncReads",
    "AsyncRepository",
    "AsyncUnitOfWork",
    "InlineRepository",
    "ThreadedRepository",
    "guarded",
    "write_with_retries_async",
]


class AsyncRepository(Protocol):
    """What :class:`~token_ledger.asyncio_application.AsyncTokenLedger` runs its calls on.

    ``write`` runs a write's operation (made afresh by ``operation()`` for each attempt) in
    one unit of work, again from the start after a transient failure; ``read`` runs a read's
    operation against stored state. ``try_shortcut`` runs a command's
    :class:`~token_ledger.commands.Shortcut` if this engine offers what it needs, and
    answers ``None`` otherwise (the command's own operation then runs). ``open`` is called
    before the first of these (it may be called again: only the first call does anything);
    ``close`` releases what ``open`` took.
    """

    async def open(self) -> None: ...

    async def write(self, operation: Callable[[], Operation[T]]) -> T: ...

    async def try_shortcut(self, shortcut: Any) -> Any | None: ...

    async def read(self, operation: Operation[T]) -> T: ...

    async def close(self) -> None: ...


class AsyncUnitOfWork(Protocol):
    """:class:`~token_ledger.repository.UnitOfWork` with every method a coroutine.

    What :func:`token_ledger.operations.run_async` sends a write's calls to.
    """

    async def load_account(self, user_id: str) -> TokenAccount | None: ...

    async def load_path(self, user_id: str) -> list[TokenAccount]: ...

    async def members_of(self, user_id: str) -> list[str]: ...

    async def insert_account(self, account: TokenAccount) -> bool: ...

    async def save_accounts(self, accounts: Sequence[TokenAccount]) -> None: ...

    async def save_grants(self, grants: Sequence[Grant]) -> None: ...

    async def save_reservations(self, reservations: Sequence[Reservation]) -> None: ...

    async def find_transaction(self, transaction_id: int) -> Transaction | None: ...

    async def entries_referencing(self, reference: str) -> list[Transaction]: ...

    async def find_reservation(self, reservation_id: str) -> Reservation | None: ...

    async def entries_mirroring(self, entry_id: int) -> list[Transaction]: ...

    async def reset_after(self, user_id: str, entry_id: int) -> bool: ...

    async def find_grant(self, grant_id: str) -> Grant | None: ...

    async def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]: ...

    async def find_by_idempotency_key(self, key: str) -> Transaction | None: ...

    async def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]: ...

    async def append_notifications(
        self, notifications: Sequence[Notification]
    ) -> list[Notification]: ...

    async def last_notification_id(self) -> int: ...

    async def advance_notification_cursor(self, consumer: str, up_to: int) -> int: ...


class AsyncReads(Protocol):
    """The reads of :class:`~token_ledger.repository.TokenRepository` as coroutines.

    What :func:`token_ledger.operations.run_async` sends a read's calls to.
    """

    async def get_account(self, user_id: str) -> TokenAccount | None: ...

    async def history(self, query: HistoryQuery) -> list[Transaction]: ...

    async def count_transactions(self, query: HistoryQuery) -> int: ...

    async def count_accounts(self) -> int: ...

    async def notifications(self, after: int, limit: int) -> list[Notification]: ...

    async def notification_cursor(self, consumer: str) -> int: ...

    async def usage(self, query: UsageQuery) -> list[UsageRow]: ...

    async def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]: ...


class _UnitsOfWork(Protocol[W_co]):
    def unit_of_work(self) -> AbstractAsyncContextManager[W_co]: ...


async def write_with_retries_async(
    repository: _UnitsOfWork[W], operation: Callable[[W], Awaitable[T]]
) -> T:
    """:func:`token_ledger.storage.write_with_retries` for an async unit of work.

    The same rule: up to :data:`~token_ledger.storage.WRITE_ATTEMPTS` attempts, again from
    the start after a :class:`~token_ledger.errors.TransientStorageError`, with the same
    random, doubling pause (``asyncio.sleep``, so the event loop keeps serving others).
    """
    for attempt in range(1, WRITE_ATTEMPTS):
        try:
            async with repository.unit_of_work() as work:
                return await operation(work)
        except TransientStorageError:
            await asyncio.sleep(
                random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt))
            )
    async with repository.unit_of_work() as work:
        return await operation(work)


async def guarded(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` in a task of its own, so that its clean-up cannot be interrupted.

    A cancellation of the caller reaches ``work`` once, at the await point where it is
    (psycopg then cancels the statement on the server and the transaction rolls back);
    further cancellations while it cleans up are held back until it has finished, so its
    connection goes back to the pool outside any transaction, never in the middle of a
    ROLLBACK. The caller's ``CancelledError`` is then raised as usual. A unit that had
    already committed when the cancellation came stays committed: never half of it.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.cancel()
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                continue
            except BaseException:  # its own failure: the caller's cancellation is raised
                break
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        raise


class ThreadedRepository:
    """A synchronous repository driven from asyncio in one worker thread of its own.

    Each unit of work is one call into the thread: the repository's own
    ``unit_of_work()``, :func:`~token_ledger.storage.write_with_retries` and
    :func:`~token_ledger.operations.run`, exactly as :class:`~token_ledger.TokenLedger` runs
    them. A task cancelled while its write waits for the thread never starts it; one cancelled
    while the thread runs it only stops waiting: the unit commits or rolls back whole, and the
    next call starts after it. One thread means one connection used in turn, as SQLite wants.

    ``open_repository`` makes the repository; it is called in the thread by :meth:`open`, so
    that opening a file and its migrations do not block the event loop.
    """

    def __init__(self, open_repository: Callable[[], TokenRepository]) -> None:
        self._open_repository = open_repository
        self._repository: TokenRepository | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._opening: asyncio.Lock | None = None
        self._owned = True
        self._closed = False

    @classmethod
    def of(cls, repository: TokenRepository) -> ThreadedRepository:
        """Drive a repository that is open already (and stays its owner's to close)."""
        threaded = cls(lambda: repository)
        threaded._repository = repository
        threaded._owned = False
        return threaded

    @property
    def repository(self) -> TokenRepository:
        """The synchronous repository, once :meth:`open` has made it."""
        if self._repository is None:
            raise StorageError("the ledger is not open yet: await ledger.__aenter__() or a call")
        return self._repository

    async def open(self) -> None:
        if self._repository is not None and self._executor is not None:
            return
        if self._closed:
            raise StorageError("the ledger is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="token-ledger")
            if self._repository is None:
                self._repository = await self._call(self._open_repository)

    async def write(self, operation: Callable[[], Operation[T]]) -> T:
        await self.open()
        repository = self.repository
        return await self._call(
            write_with_retries, repository, lambda work: operations.run(operation(), work)
        )

    async def read(self, operation: Operation[T]) -> T:
        await self.open()
        return await self._call(operations.run, operation, self.repository)

    async def try_shortcut(self, shortcut: Any) -> Any | None:
        await self.open()
        repository = self.repository
        if not shortcut.available(repository):
            return None
        return await self._call(operations.run, shortcut.operation(), repository)

    async def close(self) -> None:
        """Close the repository (one it made) once the units of work before have finished."""
        if self._closed:
            return
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            if self._repository is not None and self._owned:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(executor, self._repository.close)
        finally:
            executor.shutdown(wait=False)

    async def _call(self, function: Callable[..., T], *arguments: Any) -> T:
        if self._executor is None:
            raise StorageError("the ledger is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *arguments))


class InlineRepository:
    """A synchronous repository that does no I/O (the in-memory engine), run in the event loop.

    A unit of work has no await point in it, so no cancellation can land inside one. The
    in-memory engine's lock is held only for the microseconds of one operation; another
    thread writing to the same repository at the same moment makes the loop wait that long.
    """

    def __init__(self, repository: TokenRepository) -> None:
        self.repository = repository

    async def open(self) -> None:
        """Nothing to open."""

    async def write(self, operation: Callable[[], Operation[T]]) -> T:
        return write_with_retries(self.repository, lambda work: operations.run(operation(), work))

    async def read(self, operation: Operation[T]) -> T:
        return operations.run(operation, self.repository)

    async def try_shortcut(self, shortcut: Any) -> Any | None:
        if not shortcut.available(self.repository):
            return None
        return operations.run(shortcut.operation(), self.repository)

    async def close(self) -> None:
        self.repository.close()
