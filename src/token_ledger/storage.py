"""Driving the storage port (:mod:`token_ledger.repository`) the same way from every caller.

:func:`write_with_retries` runs one unit of work, again from the start when it
lost a race; :func:`paged` walks a read that a store answers in keyset pages.
The port itself stays a list of what an adapter provides.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from token_ledger import _validation
from token_ledger.errors import TransientStorageError
from token_ledger.repository import TokenRepository, UnitOfWork

WRITE_ATTEMPTS = 10
RETRY_BASE_DELAY = 0.005
RETRY_MAX_DELAY = 0.5

T = TypeVar("T")
Cursor = TypeVar("Cursor")


def write_with_retries(repository: TokenRepository, operation: Callable[[UnitOfWork], T]) -> T:
    """Run ``operation`` in one unit of work, from the start again if it lost a race.

    A transient failure rolled everything back, so the next attempt (with
    the same instant and idempotency key) applies the operation at most
    once. The pause is random so that the writers that collided spread out.
    After :data:`WRITE_ATTEMPTS` attempts the last failure is raised.
    """
    for attempt in range(1, WRITE_ATTEMPTS):
        try:
            with repository.unit_of_work() as work:
                return operation(work)
        except TransientStorageError:
            time.sleep(random.uniform(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2**attempt)))
    with repository.unit_of_work() as work:
        return operation(work)


def paged(
    fetch: Callable[[Cursor | None], Sequence[T]],
    cursor_of: Callable[[T], Cursor],
    page_size: int,
) -> Iterator[T]:
    """Every item of a keyset-paged read, one page in memory at a time.

    ``fetch(None)`` returns the first page, ``fetch(cursor_of(page[-1]))`` the
    next; a page shorter than ``page_size`` is the last. ``fetch`` must ask
    for ``page_size`` items (a positive int). For example, every entry of a user, newest first::

        paged(
            lambda before: repository.history(
                HistoryQuery(user_id="u1", before_id=before, limit=1000)
            ),
            lambda entry: entry.id,
            1000,
        )
    """
    _validation.positive_int(page_size, "page_size")
    cursor: Cursor | None = None
    while True:
        page = fetch(cursor)
        yield from page
        if len(page) < page_size:
            return
        cursor = cursor_of(page[-1])
