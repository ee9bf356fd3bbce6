from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from postgres import workers
from postgres_server import Database

WORKERS = 16


@pytest.fixture
def postgres_schema(request: pytest.FixtureRequest, postgres_database: Database) -> str:
    return postgres_database.new_schema(request)


@pytest.fixture(scope="session")
def worker_processes() -> Iterator[ProcessPoolExecutor]:
    """Sixteen processes, started once for the session, sharing a start line.

    Where it exists, a fork server that has already imported the library
    starts them: sixteen fresh interpreters importing it would take seconds.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["postgres.workers"])
    else:
        context = multiprocessing.get_context("spawn")
    start_line = context.Barrier(WORKERS)
    with ProcessPoolExecutor(
        WORKERS,
        mp_context=context,
        initializer=workers.join_start_line,
        initargs=(start_line,),
    ) as pool:
        yield pool
