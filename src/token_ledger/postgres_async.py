"""The PostgreSQL engine for asyncio: psycopg's ``AsyncConnection`` and ``AsyncConnectionPool``.

The statements and the rows read and written (:mod:`token_ledger._postgres_statements`), the
migrations (:mod:`token_ledger._postgres_migrations`) and the error translation
(:mod:`token_ledger.postgres`) are the synchronous engine's own; what is here awaits them.
Correctness rests on the same row locks (``SELECT ... FOR UPDATE``) as the synchronous engine.

psycopg is imported here only, and this module only by the asyncio facade when it opens a
PostgreSQL ledger, so ``import token_ledger`` works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar, cast

import attrs
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from token_ledger import _validation, operations
from token_ledger._postgres_errors import BUSY, alive, lost_a_race, storage_error
from token_ledger._postgres_migrations import migrate_async
from token_ledger._postgres_rows import ROWS, WRITE, as_columns, notification_params, sql_conditions
from token_ledger._postgres_statements import Statements, direct_deduction
from token_ledger._rows import ACCOUNT_FIELDS, account_conditions, history_conditions
from token_ledger._within_errors import TransactionRequired, UnsupportedConnection
from token_ledger.account import TokenAccount
from token_ledger.asyncio_storage import guarded, write_with_retries_async
from token_ledger.errors import InvalidInput, StorageError
from token_ledger.grants import Grant, Reservation
from token_ledger.operations import DirectDeduction, Operation, Spent
from token_ledger.postgres import DEFAULT_POOL_SIZE
from token_ledger.repository import AccountFilter, HistoryQuery, StaleCutoffs, UsageQuery
from token_ledger.thresholds import Notification
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageRow, rows_of

T = TypeVar("T")

AsyncPostgresTarget = str | psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]
Row = tuple[Any, ...]

SAVEPOINT = sql.SQL("SAVEPOINT token_ledger")
RELEASE = sql.SQL("RELEASE SAVEPOINT token_ledger")
ROLLBACK_TO = sql.SQL("ROLLBACK TO SAVEPOINT token_ledger")

__all__ = [
    "AsyncPostgresReads",
    "AsyncPostgresRepository",
    "AsyncPostgresTarget",
    "AsyncPostgresTransaction",
    "AsyncPostgresUnitOfWork",
]


@asynccontextmanager
async def translated_errors(
    given: psycopg.AsyncConnection[Any] | None = None,
) -> AsyncIterator[None]:
    """postgres.py's translation of psycopg errors, around awaited statements.

    ``given`` is the caller's own connection, if the error happened on it.
    """
    try:
        yield
    except psycopg.Error as error:
        # storage_error only asks ``given.closed``, which both connection classes answer.
        raise storage_error(error, cast(Any, given)) from error


async def _fetch(
    conn: psycopg.AsyncConnection[Any], query: sql.Composed, params: Sequence[Any]
) -> list[Row]:
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute(query, params)
    return await cursor.fetchall()


async def _with_balances(
    conn: psycopg.AsyncConnection[Any], statements: Statements, accounts: list[TokenAccount]
) -> list[TokenAccount]:
    """postgres.py's ``_with_balances``, its selects awaited.

    ``ROWS.with_balances`` decides which balances to select; a first pass only records what
    it asks for, the rows are then fetched, and a second pass builds the accounts from them.
    """
    wanted: dict[str, list[str]] = {}

    def record(query: str, user_ids: list[str]) -> list[Row]:
        wanted[query] = user_ids
        return []

    ROWS.with_balances(accounts, record)
    if not wanted:
        return accounts
    fetched = {
        query: await _fetch(conn, statements.balances[query], (user_ids,))
        for query, user_ids in wanted.items()
    }
    return ROWS.with_balances(accounts, lambda query, _user_ids: fetched[query])


class AsyncPostgresUnitOfWork:
    """:class:`~token_ledger.postgres.PostgresUnitOfWork` on an ``AsyncConnection``: the same
    statements and rows, each call a coroutine."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], statements: Statements) -> None:
        self._conn = conn
        self._sql = statements

    async def _execute(
        self, query: sql.Composed, params: Sequence[Any] | Mapping[str, Any]
    ) -> psycopg.AsyncCursor[Row]:
        cursor = self._conn.cursor(row_factory=tuple_row)
        await cursor.execute(query, params)
        return cursor

    async def load_account(self, user_id: str) -> TokenAccount | None:
        row = await (await self._execute(self._sql.lock_account, (user_id,))).fetchone()
        if row is None:
            return None
        return (await _with_balances(self._conn, self._sql, [ROWS.account(row)]))[0]

    async def load_path(self, user_id: str) -> list[TokenAccount]:
        """As :meth:`PostgresUnitOfWork.load_path`: one statement locks the path, root first."""
        rows = await _fetch(self._conn, self._sql.lock_path, (user_id,))
        return await _with_balances(self._conn, self._sql, [ROWS.account(row) for row in rows])

    async def members_of(self, user_id: str) -> list[str]:
        rows = await _fetch(self._conn, self._sql.members_of, (user_id,))
        return sorted(row[0] for row in rows)  # by code point, as Python sorts

    async def insert_account(self, account: TokenAccount) -> bool:
        cursor = await self._execute(self._sql.insert_account, WRITE.account_row(account))
        return cursor.rowcount == 1

    async def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        if not accounts:
            return
        rows = [WRITE.account_row(account) for account in accounts]
        if len(rows) == 1:
            cursor = await self._execute(
                self._sql.save_account, dict(zip(ACCOUNT_FIELDS, rows[0], strict=True))
            )
        else:
            cursor = await self._execute(self._sql.save_accounts, as_columns(rows))
        if cursor.rowcount != len(accounts):
            raise StorageError(
                f"refused to store {len(accounts)} accounts: {len(accounts) - cursor.rowcount}"
                " would spend beyond their limit and overage, or do not exist"
            )

    async def save_grants(self, grants: Sequence[Grant]) -> None:
        if grants:
            rows = [WRITE.grant_row(grant) for grant in grants]
            await self._execute(self._sql.save_grants, as_columns(rows))

    async def save_reservations(self, reservations: Sequence[Reservation]) -> None:
        if reservations:
            rows = [WRITE.reservation_row(r) for r in reservations]
            await self._execute(self._sql.save_reservations, as_columns(rows))

    async def find_transaction(self, transaction_id: int) -> Transaction | None:
        cursor = await self._execute(self._sql.find_transaction, (transaction_id,))
        row = await cursor.fetchone()
        return None if row is None else ROWS.transaction(row)

    async def entries_referencing(self, reference: str) -> list[Transaction]:
        cursor = await self._execute(self._sql.entries_referencing, (reference,))
        return [ROWS.transaction(row) for row in await cursor.fetchall()]

    async def reset_after(self, user_id: str, entry_id: int) -> bool:
        cursor = await self._execute(self._sql.reset_after, (user_id, entry_id))
        row = await cursor.fetchone()
        return bool(row is not None and row[0])

    async def entries_mirroring(self, entry_id: int) -> list[Transaction]:
        cursor = await self._execute(self._sql.entries_mirroring, (entry_id,))
        return [ROWS.transaction(row) for row in await cursor.fetchall()]

    async def find_reservation(self, reservation_id: str) -> Reservation | None:
        cursor = await self._execute(self._sql.find_reservation, (reservation_id,))
        row = await cursor.fetchone()
        return None if row is None else ROWS.reservation(row)

    async def find_grant(self, grant_id: str) -> Grant | None:
        cursor = await self._execute(self._sql.find_grant, (grant_id,))
        row = await cursor.fetchone()
        return None if row is None else ROWS.grant(row)

    async def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        if not entries:
            return []
        if len(entries) == 1:
            (entry,) = entries
            cursor = await self._execute(self._sql.append_transaction, WRITE.entry_row(entry))
            row = await cursor.fetchone()
            assert row is not None  # INSERT ... RETURNING returns the row it inserted
            return [attrs.evolve(entry, id=row[0])]
        rows = [WRITE.entry_row(entry) for entry in entries]
        cursor = await self._execute(self._sql.append_transactions, as_columns(rows))
        # Rows are inserted in ``position`` order, so their identities grow in it.
        in_order = sorted(row[0] for row in await cursor.fetchall())
        return [attrs.evolve(entry, id=i) for entry, i in zip(entries, in_order, strict=True)]

    async def find_by_idempotency_key(self, key: str) -> Transaction | None:
        cursor = await self._execute(self._sql.find_by_idempotency_key, (key,))
        row = await cursor.fetchone()
        return None if row is None else ROWS.transaction(row)

    async def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        conditions, params = sql_conditions(
            account_conditions(AccountFilter(stale=cutoffs), after_user_id)
        )
        rows = await _fetch(self._conn, self._sql.lock_batch(conditions), [*params, limit])
        return await _with_balances(self._conn, self._sql, [ROWS.account(row) for row in rows])

    async def append_notifications(
        self, notifications: Sequence[Notification]
    ) -> list[Notification]:
        """As :meth:`PostgresUnitOfWork.append_notifications`: under the notifications'
        advisory lock, so they commit in the order of their ids."""
        if not notifications:
            return []
        await self._execute(self._sql.notification_lock, ())
        stored = []
        for note in notifications:
            cursor = await self._execute(self._sql.append_notification, notification_params(note))
            found = await cursor.fetchone()
            assert found is not None  # INSERT ... RETURNING returns the row it inserted
            stored.append(attrs.evolve(note, id=found[0], occurrence=found[1]))
        return stored

    async def last_notification_id(self) -> int:
        rows = await _fetch(self._conn, self._sql.last_notification_id, ())
        return int(rows[0][0])

    async def advance_notification_cursor(self, consumer: str, up_to: int) -> int:
        rows = await _fetch(self._conn, self._sql.advance_cursor, (consumer, up_to))
        return int(rows[0][0])


class AsyncPostgresReads:
    """The reads of :class:`~token_ledger.postgres.PostgresRepository` on one ``AsyncConnection``,
    without locks: what a read's calls are sent to."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], statements: Statements) -> None:
        self._conn = conn
        self._sql = statements

    async def _accounts(self, query: sql.Composed, params: Sequence[Any]) -> list[TokenAccount]:
        accounts = [ROWS.account(row) for row in await _fetch(self._conn, query, params)]
        return await _with_balances(self._conn, self._sql, accounts)

    async def get_account(self, user_id: str) -> TokenAccount | None:
        accounts = await self._accounts(self._sql.select_account, (user_id,))
        return accounts[0] if accounts else None

    async def history(self, query: HistoryQuery) -> list[Transaction]:
        conditions, params = sql_conditions(history_conditions(query))
        rows = await _fetch(self._conn, self._sql.history_query(conditions), [*params, query.limit])
        return [ROWS.transaction(row) for row in rows]

    async def count_transactions(self, query: HistoryQuery) -> int:
        conditions, params = sql_conditions(history_conditions(attrs.evolve(query, before_id=None)))
        return int((await _fetch(self._conn, self._sql.count_query(conditions), params))[0][0])

    async def count_accounts(self) -> int:
        return int((await _fetch(self._conn, self._sql.count_accounts, ()))[0][0])

    async def notifications(self, after: int, limit: int) -> list[Notification]:
        rows = await _fetch(self._conn, self._sql.notifications_after, (after, limit))
        return [ROWS.notification(row) for row in rows]

    async def notification_cursor(self, consumer: str) -> int:
        rows = await _fetch(self._conn, self._sql.cursor_position, (consumer,))
        return 0 if not rows else int(rows[0][0])

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        statement, params = self._sql.usage_query(query)
        return rows_of(query, await _fetch(self._conn, statement, params))

    async def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        conditions, params = sql_conditions(account_conditions(where, after_user_id))
        query = self._sql.select_accounts(conditions)
        return await self._accounts(query, [*params, limit])


class AsyncPostgresRepository:
    """The ledger's tables in PostgreSQL, for asyncio: an :class:`~token_ledger.asyncio_storage.
    AsyncRepository`.

    ``target`` is a connection URL (a pool of up to :data:`~token_ledger.postgres.DEFAULT_POOL_SIZE`
    connections is made by :meth:`open` and closed by :meth:`close`), a
    ``psycopg_pool.AsyncConnectionPool`` (open it yourself), or one ``psycopg.AsyncConnection``,
    which tasks then take turns on. A pool or connection you pass stays yours to close, and
    must not be inside a transaction of your own when the ledger uses it (see
    :meth:`bound_to` for that). The tables live in ``schema``; :meth:`open` brings them up
    to date with the synchronous engine's own migrations, run over this target.
    """

    def __init__(self, target: AsyncPostgresTarget, *, schema: str = "public") -> None:
        self._schema = _validation.schema_name(schema)
        self._sql = Statements(self._schema)
        if not isinstance(target, str | psycopg.AsyncConnection | AsyncConnectionPool):
            raise InvalidInput(
                "target must be a URL, a psycopg.AsyncConnection or a"
                f" psycopg_pool.AsyncConnectionPool, got {target!r}"
            )
        self._target = target
        self._source: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any] | None = (
            None if isinstance(target, str) else target
        )
        self._owned_pool: AsyncConnectionPool[Any] | None = None
        self._turns = asyncio.Lock()  # for one connection of the caller's
        self._opening = asyncio.Lock()
        self._opened = False
        self._closed = False

    @property
    def schema(self) -> str:
        return self._schema

    async def open(self) -> None:
        """Apply the migrations, then make the pool if ``target`` was a URL. Only once."""
        if self._opened:
            return
        async with self._opening:
            if self._opened:
                return
            if self._closed:
                raise StorageError("the ledger is closed")
            if isinstance(self._target, str):
                # A direct connection first: a wrong URL fails now with libpq's own
                # message, where a pool would keep retrying in the background.
                async with translated_errors():
                    conn = await psycopg.AsyncConnection.connect(self._target)
                try:
                    self._source = conn
                    await self._migrate()
                finally:
                    self._source = None
                    await conn.close()
                # Autocommit: a unit of work sends its own BEGIN (conn.transaction()), and
                # the one-statement deduction need not switch autocommit on and off.
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self._target,
                    min_size=1,
                    max_size=DEFAULT_POOL_SIZE,
                    kwargs={"autocommit": True},
                    open=False,
                    name="token-ledger",
                )
                async with translated_errors():
                    await pool.open()
                self._owned_pool = self._source = pool
            else:
                await self._migrate()
            self._opened = True

    async def _migrate(self) -> None:
        """The synchronous engine's migrations, each step in a transaction of this engine's."""
        await migrate_async(self._transaction, self._schema)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        source = self._source
        if source is None:
            raise StorageError("the ledger is closed" if self._closed else "the ledger is not open")
        if isinstance(source, AsyncConnectionPool):
            async with translated_errors(), source.connection() as conn:
                yield conn
            return
        async with self._turns, translated_errors(source):
            if source.info.transaction_status in BUSY:
                # Our transaction would only be a savepoint of yours, and nothing
                # would be stored until you commit: bound_to() is for that.
                raise StorageError(
                    "the connection is inside a transaction: commit or roll back before"
                    " handing it to token-ledger, or use ledger.within(connection)"
                )
            yield source

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """postgres.py's ``_transaction``: a dead pooled connection shows itself at ``BEGIN``,
        before any of the work reached the server, and the work starts again on another."""
        source = self._source
        attempts = source.max_size + 1 if isinstance(source, AsyncConnectionPool) else 1
        for attempts_left in reversed(range(attempts)):
            async with self._connection() as conn, AsyncExitStack() as transaction:
                try:
                    await transaction.enter_async_context(conn.transaction())
                except psycopg.OperationalError:
                    if conn.closed and attempts_left:
                        continue
                    raise
                yield conn
                return

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncPostgresUnitOfWork]:
        """One transaction: committed on a clean exit, rolled back when the block raises."""
        async with self._transaction() as conn:
            yield AsyncPostgresUnitOfWork(conn, self._sql)

    async def write(self, operation: Callable[[], Operation[T]]) -> T:
        await self.open()
        return await guarded(
            write_with_retries_async(self, lambda work: operations.run_async(operation(), work))
        )

    async def read(self, operation: Operation[T]) -> T:
        await self.open()
        return await guarded(self._read(operation))

    async def _read(self, operation: Operation[T]) -> T:
        async with self._transaction() as conn:
            return await operations.run_async(operation, AsyncPostgresReads(conn, self._sql))

    async def try_shortcut(self, shortcut: Any) -> Any | None:
        if not shortcut.available(self):
            return None
        await self.open()
        result: Any | None = await guarded(operations.run_async(shortcut.operation(), self))
        return result

    async def deduct_directly(self, deduction: DirectDeduction) -> Spent | None:
        """postgres.py's ``deduct_directly``: the common deduction as its one statement, in
        autocommit, one round trip; ``None`` when its guard matched nothing or it lost a race
        (it changed nothing then, and the full path takes over).

        A member's deduction takes the full path here: the synchronous engine sends the
        member's statement on the hint of the common one, which this one does not send
        (it keeps no hints)."""
        statement, params = direct_deduction(self._sql, deduction, hinted=False)
        async with self._idle_connection() as conn:
            try:
                row = await _alone(conn, statement, params)
            except psycopg.Error as error:
                if lost_a_race(error):
                    return None
                raise
        if row is None:
            return None
        entry_id, balance_after, overage_limit = row
        return deduction.spent(entry_id, balance_after, overage_limit)

    @asynccontextmanager
    async def _idle_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """postgres.py's ``_idle_connection``: one a pool holds that the server closed is seen
        without a round trip, given back (the pool replaces it), and another is taken."""
        source = self._source
        attempts = source.max_size + 1 if isinstance(source, AsyncConnectionPool) else 1
        for attempts_left in reversed(range(attempts)):
            async with self._connection() as conn:
                if attempts_left and not alive(cast(Any, conn)):
                    continue
                yield conn
                return

    async def bound_to(
        self, connection: object, *, schema: str | None = None
    ) -> AsyncPostgresTransaction:
        """This ledger's tables (or those of ``schema``) on a connection or SQLAlchemy session
        whose transaction is the caller's: see :class:`AsyncPostgresTransaction`."""
        await self.open()
        statements = self._sql if schema is None else Statements(_validation.schema_name(schema))
        joined = AsyncPostgresTransaction(await _async_connection_of(connection), statements)
        joined._check_usable()
        return joined

    async def close(self) -> None:
        """Close the pool made from a URL; a pool or connection you passed stays open."""
        self._closed = True
        self._opened = False
        self._source = None
        pool, self._owned_pool = self._owned_pool, None
        if pool is not None:
            await pool.close()


class AsyncPostgresTransaction:
    """The ledger inside a transaction the caller owns, on the caller's ``AsyncConnection``.

    Each write is a savepoint of that transaction: it is released when the write succeeds
    and rolled back to when it fails (the caller's transaction stays usable), and nothing
    is committed: the caller's ``COMMIT`` stores the ledger's writes with their own, or a
    ``ROLLBACK`` neither. A write is never retried here, since the caller's transaction may
    have done work of its own: a :class:`~token_ledger.errors.TransientStorageError` (a
    deadlock, a serialization failure, an idempotency key stored concurrently) is raised for
    the caller to retry the whole transaction. Reads run on the same connection, so they see
    the transaction's uncommitted writes. Tasks sharing this object take turns.

    A connection outside a transaction is fine if it is not in autocommit mode: psycopg then
    begins one, left open for the caller. In autocommit mode a write would commit at once,
    and a transaction that has failed cannot store anything: both raise
    :class:`~token_ledger.within.TransactionRequired`, as the synchronous ``within`` does.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], statements: Statements) -> None:
        self._conn = conn
        self._sql = statements
        self._turns = asyncio.Lock()
        self._ended = False

    async def open(self) -> None:
        """Nothing to open: the connection is the caller's."""

    async def close(self) -> None:
        """The ``within`` block ended: later calls are refused. The transaction stays open."""
        self._ended = True

    async def write(self, operation: Callable[[], Operation[T]]) -> T:
        return await guarded(self._write(operation))

    async def read(self, operation: Operation[T]) -> T:
        return await guarded(self._read(operation))

    async def try_shortcut(self, shortcut: Any) -> None:
        """None: a shortcut commits on its own (autocommit), and nothing here may commit."""

    async def _write(self, operation: Callable[[], Operation[T]]) -> T:
        conn = self._conn
        async with self._turns, translated_errors(conn):
            self._check_usable()
            await conn.execute(SAVEPOINT)
            try:
                result = await operations.run_async(
                    operation(), AsyncPostgresUnitOfWork(conn, self._sql)
                )
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):  # the first failure is the news
                        await conn.execute(ROLLBACK_TO)
                        await conn.execute(RELEASE)
                raise
            await conn.execute(RELEASE)
            return result

    async def _read(self, operation: Operation[T]) -> T:
        async with self._turns, translated_errors(self._conn):
            if self._ended:
                self._check_usable()
            return await operations.run_async(operation, AsyncPostgresReads(self._conn, self._sql))

    def _check_usable(self) -> None:
        conn = self._conn
        if self._ended:
            raise TransactionRequired(
                "this ledger.within(...) block has ended: its calls ran in your transaction,"
                " so open a new block for the next ones"
            )
        if conn.closed:
            raise StorageError("the connection given to ledger.within() is closed: reconnect")
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise TransactionRequired(
                "the transaction given to ledger.within() has failed (one of its statements"
                " raised): roll it back, then run it again"
            )
        if status == TransactionStatus.IDLE and conn.autocommit:
            raise TransactionRequired(
                "the connection given to ledger.within() is in autocommit mode and outside a"
                " transaction, so a write would commit at once: begin one first"
                " (async with connection.transaction(): ...)"
            )


async def _alone(
    conn: psycopg.AsyncConnection[Any], query: bytes, params: Mapping[str, Any]
) -> Row | None:
    """postgres.py's ``_alone``: ``query`` as a transaction of its own (autocommit), one
    round trip; the connection's own ``autocommit`` is given back as it was."""
    cursor = conn.cursor(row_factory=tuple_row)
    if conn.autocommit:
        await cursor.execute(query, params)
        return await cursor.fetchone()
    await conn.set_autocommit(True)
    try:
        await cursor.execute(query, params)
        return await cursor.fetchone()
    finally:
        if not conn.closed:
            await conn.set_autocommit(False)


async def _async_connection_of(connection: object) -> psycopg.AsyncConnection[Any]:
    """The psycopg ``AsyncConnection`` of ``connection``: itself, or the driver connection of a
    SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` (dialect ``postgresql+psycopg``)."""
    if isinstance(connection, psycopg.AsyncConnection):
        return connection
    alchemy = sys.modules.get("sqlalchemy.ext.asyncio")  # imported by whoever made the session
    if alchemy is not None and isinstance(
        connection, alchemy.AsyncSession | alchemy.AsyncConnection
    ):
        bound = (
            await connection.connection()
            if isinstance(connection, alchemy.AsyncSession)
            else connection
        )
        raw = await bound.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, psycopg.AsyncConnection):
            return driver
        raise UnsupportedConnection(
            "ledger.within() needs SQLAlchemy's psycopg driver (postgresql+psycopg://...),"
            f" got a {type(driver).__name__} connection"
        )
    raise UnsupportedConnection(
        "ledger.within() takes a psycopg.AsyncConnection or a SQLAlchemy AsyncSession or"
        f" AsyncConnection, got {connection!r}"
    )
