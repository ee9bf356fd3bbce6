"""The PostgreSQL engine: many processes on many hosts sharing one database.

Correctness rests on row locks rather than on the isolation level: a write
locks the accounts it reads (``SELECT ... FOR UPDATE``) before the domain
decides anything, so at PostgreSQL's default READ COMMITTED concurrent
deductions of one account queue on its row instead of overspending. Stricter
levels are safe as well: their serialization failures become
:class:`~token_ledger.errors.TransientStorageError`, and
:class:`~token_ledger.TokenLedger` runs the unit of work again.

psycopg is imported here only, so ``import token_ledger`` works without it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from token_ledger import _validation
from token_ledger._postgres_errors import (
    BUSY,
    alive,
    begun,
    lost_a_race,
    storage_error,
    translated_errors,
)
from token_ledger._postgres_migrations import MIGRATIONS as MIGRATIONS  # also read from here
from token_ledger._postgres_migrations import migrate
from token_ledger._postgres_rows import (
    ROWS,
    WRITE,
    as_columns,
    named_conditions,
    notification_params,
    read_one_account,
    read_with_balances,
    sql_conditions,
)
from token_ledger._postgres_statements import Statements, direct_deduction
from token_ledger._rows import (
    ACCOUNT_FIELDS,
    KnownFullPath,
    KnownMembers,
    account_conditions,
    history_conditions,
)
from token_ledger.account import TokenAccount
from token_ledger.errors import InvalidInput, StorageError
from token_ledger.grants import Grant, Reservation
from token_ledger.operations import CalendarResets, DirectDeduction, ResetStep, Spent
from token_ledger.reconciliation import Discrepancy
from token_ledger.repository import AccountFilter, HistoryQuery, StaleCutoffs, UsageQuery
from token_ledger.thresholds import Notification
from token_ledger.transactions import Transaction
from token_ledger.usage import UsageRow, rows_of

PostgresTarget = str | psycopg.Connection[Any] | ConnectionPool[Any]

DEFAULT_POOL_SIZE = 10

DEFAULT_POOL_SIZE = 10


def _alone(
    conn: psycopg.Connection[Any],
    query: bytes,
    params: Sequence[Any] | Mapping[str, Any] | None,
) -> psycopg.Cursor[tuple[Any, ...]]:
    """``query`` as a transaction of its own (autocommit): one round trip, whatever the
    connection's own ``autocommit``, which is given back as it was. Its rows are fetched
    with it, so they can be read afterwards."""
    cursor = conn.cursor(row_factory=tuple_row)
    if conn.autocommit:
        return cursor.execute(query, params)
    conn.autocommit = True
    try:
        return cursor.execute(query, params)
    finally:
        if not conn.closed:
            conn.autocommit = False


_NOTHING_DONE = (None, None, None, False)
_NOTHING_DONE_FOR_A_MEMBER = (None, None, None, None, None, False)


def _directly(
    conn: psycopg.Connection[Any],
    statement: bytes,
    params: Mapping[str, Any],
    nothing_done: tuple[Any, ...],
) -> tuple[Any, ...] | None:
    """The row of a one-statement deduction; ``nothing_done`` (its row when its guard
    matched nothing) when it lost a race."""
    try:
        row: tuple[Any, ...] | None = _alone(conn, statement, params).fetchone()
    except psycopg.Error as error:
        if lost_a_race(error):
            return nothing_done
        raise
    return row


def _fetch(
    conn: psycopg.Connection[Any], query: sql.Composed | bytes, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    return conn.cursor(row_factory=tuple_row).execute(query, params).fetchall()


def _with_balances(
    conn: psycopg.Connection[Any], statements: Statements, accounts: list[TokenAccount]
) -> list[TokenAccount]:
    return ROWS.with_balances(
        accounts,
        lambda query, user_ids: _fetch(
            conn, statements.rendered.of(statements.balances[query]), (user_ids,)
        ),
    )


class PostgresUnitOfWork:
    """One transaction on one connection; every write is one statement, however many rows."""

    def __init__(self, conn: psycopg.Connection[Any], statements: Statements) -> None:
        self._conn = conn
        self._sql = statements

    def _execute(
        self, query: sql.Composed, params: Sequence[Any] | Mapping[str, Any]
    ) -> psycopg.Cursor[tuple[Any, ...]]:
        statement = self._sql.rendered.of(query)
        return self._conn.cursor(row_factory=tuple_row).execute(statement, params)

    def load_account(self, user_id: str) -> TokenAccount | None:
        row = self._execute(self._sql.lock_account, (user_id,)).fetchone()
        return (
            None if row is None else _with_balances(self._conn, self._sql, [ROWS.account(row)])[0]
        )

    def load_path(self, user_id: str) -> list[TokenAccount]:
        """The account and its organisations, root first, locked in that order by one
        statement (:data:`~token_ledger._postgres_statements.LOCK_PATH`); their grants and
        holds are read as :meth:`load_account` reads them, one select per kind for all."""
        rows = self._execute(self._sql.lock_path, (user_id,)).fetchall()
        return _with_balances(self._conn, self._sql, [ROWS.account(row) for row in rows])

    def members_of(self, user_id: str) -> list[str]:
        rows = self._execute(self._sql.members_of, (user_id,)).fetchall()
        return sorted(row[0] for row in rows)  # by code point, as Python sorts

    def insert_account(self, account: TokenAccount) -> bool:
        cursor = self._execute(self._sql.insert_account, WRITE.account_row(account))
        return cursor.rowcount == 1

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        if not accounts:
            return
        rows = [WRITE.account_row(account) for account in accounts]
        if len(rows) == 1:
            cursor = self._execute(
                self._sql.save_account, dict(zip(ACCOUNT_FIELDS, rows[0], strict=True))
            )
        else:
            cursor = self._execute(self._sql.save_accounts, as_columns(rows))
        if cursor.rowcount != len(accounts):
            raise StorageError(
                f"refused to store {len(accounts)} accounts: {len(accounts) - cursor.rowcount}"
                " would spend beyond their limit and overage, or do not exist"
            )

    def save_grants(self, grants: Sequence[Grant]) -> None:
        if grants:
            self._execute(self._sql.save_grants, as_columns([WRITE.grant_row(g) for g in grants]))

    def save_reservations(self, reservations: Sequence[Reservation]) -> None:
        if reservations:
            rows = [WRITE.reservation_row(r) for r in reservations]
            self._execute(self._sql.save_reservations, as_columns(rows))

    def find_transaction(self, transaction_id: int) -> Transaction | None:
        row = self._execute(self._sql.find_transaction, (transaction_id,)).fetchone()
        return None if row is None else ROWS.transaction(row)

    def entries_referencing(self, reference: str) -> list[Transaction]:
        rows = self._execute(self._sql.entries_referencing, (reference,)).fetchall()
        return [ROWS.transaction(row) for row in rows]

    def reset_after(self, user_id: str, entry_id: int) -> bool:
        row = self._execute(self._sql.reset_after, (user_id, entry_id)).fetchone()
        return bool(row is not None and row[0])

    def entries_mirroring(self, entry_id: int) -> list[Transaction]:
        rows = self._execute(self._sql.entries_mirroring, (entry_id,)).fetchall()
        return [ROWS.transaction(row) for row in rows]

    def find_reservation(self, reservation_id: str) -> Reservation | None:
        row = self._execute(self._sql.find_reservation, (reservation_id,)).fetchone()
        return None if row is None else ROWS.reservation(row)

    def find_grant(self, grant_id: str) -> Grant | None:
        row = self._execute(self._sql.find_grant, (grant_id,)).fetchone()
        return None if row is None else ROWS.grant(row)

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        if not entries:
            return []
        if len(entries) == 1:
            (entry,) = entries
            row = self._execute(self._sql.append_transaction, WRITE.entry_row(entry)).fetchone()
            assert row is not None  # INSERT ... RETURNING returns the row it inserted
            return [attrs.evolve(entry, id=row[0])]
        rows = [WRITE.entry_row(entry) for entry in entries]
        ids = self._execute(self._sql.append_transactions, as_columns(rows)).fetchall()
        # Rows are inserted in ``position`` order, so their identities grow in it.
        in_order = sorted(row[0] for row in ids)
        return [attrs.evolve(entry, id=i) for entry, i in zip(entries, in_order, strict=True)]

    def find_by_idempotency_key(self, key: str) -> Transaction | None:
        row = self._execute(self._sql.find_by_idempotency_key, (key,)).fetchone()
        return None if row is None else ROWS.transaction(row)

    def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        conditions, params = sql_conditions(
            account_conditions(AccountFilter(stale=cutoffs), after_user_id)
        )
        rows = self._execute(self._sql.lock_batch(conditions), [*params, limit]).fetchall()
        return _with_balances(self._conn, self._sql, [ROWS.account(row) for row in rows])

    def append_notifications(self, notifications: Sequence[Notification]) -> list[Notification]:
        if not notifications:
            return []
        self._execute(self._sql.notification_lock, ())
        stored = []
        for note in notifications:
            row = self._execute(self._sql.append_notification, notification_params(note))
            found = row.fetchone()
            assert found is not None  # INSERT ... RETURNING returns the row it inserted
            stored.append(attrs.evolve(note, id=found[0], occurrence=found[1]))
        return stored

    def last_notification_id(self) -> int:
        row = self._execute(self._sql.last_notification_id, ()).fetchone()
        return int(row[0]) if row is not None else 0

    def advance_notification_cursor(self, consumer: str, up_to: int) -> int:
        row = self._execute(self._sql.advance_cursor, (consumer, up_to)).fetchone()
        assert row is not None
        return int(row[0])

    def notifications(self, after: int, limit: int) -> list[Notification]:
        rows = self._execute(self._sql.notifications_after, (after, limit)).fetchall()
        return [ROWS.notification(row) for row in rows]

    def notification_cursor(self, consumer: str) -> int:
        row = self._execute(self._sql.cursor_position, (consumer,)).fetchone()
        return 0 if row is None else int(row[0])


class PostgresRepository:
    """Accounts and ledger entries in PostgreSQL tables, safe for many processes at once.

    ``target`` is a connection URL (or libpq conninfo string), from which a pool of up
    to :data:`DEFAULT_POOL_SIZE` connections is made and closed by :meth:`close`; a
    ``psycopg_pool.ConnectionPool``; or one ``psycopg.Connection``, which threads then
    take turns on. A pool or connection you pass stays yours: :meth:`close` leaves it
    open, and it must not be inside a transaction of your own when the ledger uses it.
    The tables live in ``schema``, created with them if missing; the migrations to the
    current version run once, under an advisory lock, however many processes start at once.
    """

    def __init__(self, target: PostgresTarget, *, schema: str = "public") -> None:
        self._schema = _validation.schema_name(schema)
        self._sql = Statements(self._schema)
        self._full_path_users = KnownFullPath()
        self._members = KnownMembers()
        self._lock = threading.Lock()
        self._owned_pool: ConnectionPool[Any] | None = None
        if isinstance(target, str):
            # A direct connection first: a wrong URL fails now with libpq's own
            # message, where a pool would keep retrying in the background.
            with translated_errors(), psycopg.connect(target) as conn:
                migrate(lambda: begun(conn), self._schema)
            # In autocommit, a statement alone (a read, the one-statement deduction) is its
            # own transaction with no BEGIN to send; units of work send BEGIN either way.
            self._owned_pool = ConnectionPool(
                target,
                min_size=1,
                max_size=DEFAULT_POOL_SIZE,
                open=True,
                name="token-ledger",
                kwargs={"autocommit": True},
            )
            # Opened before the first call: a first checkout that races the pool's own
            # first connection makes a second one.
            try:
                with translated_errors():
                    self._owned_pool.wait()
            except StorageError:
                self._owned_pool.close()
                raise
            self._source: psycopg.Connection[Any] | ConnectionPool[Any] = self._owned_pool
        elif isinstance(target, psycopg.Connection | ConnectionPool):
            self._source = target
            migrate(self._transaction, self._schema)
        else:
            raise InvalidInput(
                "target must be a URL, a psycopg.Connection or a psycopg_pool.ConnectionPool,"
                f" got {target!r}"
            )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        source = self._source
        if isinstance(source, ConnectionPool):
            # getconn and putconn rather than the pool's context manager, which commits
            # on the way out: every transaction here has ended by then.
            try:
                conn = source.getconn()
            except psycopg.Error as error:
                raise storage_error(error) from error
            try:
                yield conn
            except psycopg.Error as error:
                raise storage_error(error) from error
            finally:
                source.putconn(conn)
        else:
            with self._lock, translated_errors(source):
                if source.info.transaction_status in BUSY:
                    # Our transaction would only be a savepoint of yours, and
                    # nothing would be stored until you commit.
                    raise StorageError(
                        "the connection is inside a transaction: commit or roll back"
                        " before handing it to token-ledger"
                    )
                yield source

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction on a connection that was alive when it began.

        The server closes idle connections without the pool noticing: an
        operator's ``pg_terminate_backend``, a failover, a proxy's idle timeout,
        a restart. Checking every connection before use would add a round trip
        to every call, so a dead one shows itself at ``BEGIN`` instead. Nothing
        of the work has reached the server then, so it starts again on another
        connection, and the pool, given the dead one back, replaces it. A pool
        holds at most ``max_size`` dead connections, hence that many attempts
        and one more. A failure after ``BEGIN`` is never retried here: a COMMIT
        that got no answer may have been applied.
        """
        attempts = self._source.max_size + 1 if isinstance(self._source, ConnectionPool) else 1
        for attempts_left in reversed(range(attempts)):
            with self._connection() as conn:
                transaction = conn.transaction()
                try:
                    transaction.__enter__()
                except psycopg.OperationalError:
                    if conn.closed and attempts_left:
                        continue
                    raise
                try:
                    yield conn
                except BaseException as error:
                    if not transaction.__exit__(type(error), error, error.__traceback__):
                        raise
                else:
                    transaction.__exit__(None, None, None)
                return

    @contextmanager
    def _idle_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection the server has not closed, as far as can be seen without a round trip.

        Of a pool's, one found closed goes back (the pool replaces it) and another
        is taken, up to ``max_size + 1`` times, as :meth:`_transaction` does when
        ``BEGIN`` fails: nothing has been sent on it. A single connection of the
        caller's is used as it is, and its failure says to reconnect.
        """
        attempts = self._source.max_size + 1 if isinstance(self._source, ConnectionPool) else 1
        for attempts_left in reversed(range(attempts)):
            with self._connection() as conn:
                if attempts_left and not alive(conn):
                    continue
                yield conn
                return

    def deduct_directly(self, deduction: DirectDeduction) -> Spent | None:
        """The common deduction as one statement in autocommit: one round trip.

        A member's is a statement of its own, which locks its organisation's row first. A
        user the common statement finds to have an anchor, a zone, windows or an
        organisation (it does not tell them apart) is sent the member's at once, a second
        round trip: a member is sent it first from then on
        (:class:`~token_ledger._rows.KnownMembers`), and a user that is no member, or one
        on a path the member's statement never covers, goes to the full path at once from
        then on (:class:`~token_ledger._rows.KnownFullPath`). ``None`` when the guard
        matches nothing, and when the statement lost a race (a serialization failure at
        REPEATABLE READ or SERIALIZABLE, a deadlock, a key stored concurrently): it changed
        nothing, and the full path takes over.
        """
        user_id = deduction.user_id
        if user_id in self._full_path_users:
            return None
        known = user_id in self._members
        if not known:
            sent = direct_deduction(self._sql, deduction, hinted=True)
            row = self._deduct(sent, _NOTHING_DONE)
            if row is None:  # no such account
                return None
            entry_id, balance_after, overage_limit, other = row
            if entry_id is not None:
                return deduction.spent(entry_id, balance_after, overage_limit)
            if not other:
                return None
            self._members.add(user_id)
        sent = direct_deduction(self._sql, deduction, hinted=True, member=True)
        row = self._deduct(sent, _NOTHING_DONE_FOR_A_MEMBER)
        if row is None:  # no member (any more)
            self._members.discard(user_id)
            if not known:  # then the common statement saw an anchor, a zone or windows
                self._full_path_users.add(user_id)
            return None
        entry_id, balance_after, overage_limit, share_balance, share_overage, never = row
        if entry_id is None:
            if never:
                self._full_path_users.add(user_id)
            return None
        organisation = (share_balance, share_overage)
        return deduction.spent(entry_id, balance_after, overage_limit, organisation)

    def _deduct(
        self, sent: tuple[bytes, Mapping[str, Any]], nothing_done: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        """The row of a one-statement deduction (:func:`_directly`), on a connection alive
        when it was sent.

        A pooled connection the server has closed is replaced before anything is sent
        (as :meth:`_idle_connection` does); a failure once the statement is sent is not
        retried: it may have been applied. Written out rather than through the context
        managers: this is the hot path, and they cost a tenth of the client's time.
        """
        statement, params = sent
        source = self._source
        if not isinstance(source, ConnectionPool):
            with self._idle_connection() as conn:
                return _directly(conn, statement, params, nothing_done)
        for attempts_left in reversed(range(source.max_size + 1)):
            try:
                conn = source.getconn()
            except psycopg.Error as error:
                raise storage_error(error) from error
            try:
                if attempts_left and not alive(conn):
                    continue
                return _directly(conn, statement, params, nothing_done)
            except psycopg.Error as error:
                raise storage_error(error) from error
            finally:
                source.putconn(conn)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @contextmanager
    def unit_of_work(self) -> Iterator[PostgresUnitOfWork]:
        with self._transaction() as conn:
            yield PostgresUnitOfWork(conn, self._sql)

    def _alone(
        self, query: bytes | sql.Composed, params: Sequence[Any] | Mapping[str, Any] | None
    ) -> list[tuple[Any, ...]]:
        """The rows of one statement that only reads, as a transaction of its own.

        One round trip: no ``BEGIN`` and ``COMMIT`` around it, and one statement
        sees one snapshot. A read changes nothing, so one that fails on a connection
        the server has closed is sent again on another, as :meth:`_transaction` does.
        """
        attempts = self._source.max_size + 1 if isinstance(self._source, ConnectionPool) else 1
        rendered = query if isinstance(query, bytes) else query.as_bytes()
        for attempts_left in reversed(range(attempts)):
            with self._connection() as conn:
                try:
                    return _alone(conn, rendered, params).fetchall()
                except psycopg.OperationalError:
                    if conn.closed and attempts_left:
                        continue
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def count_accounts_where(self, filters: Sequence[AccountFilter]) -> list[int]:
        """How many accounts match each filter, exactly, counted in one pass."""
        conditions = []
        params: list[Any] = []
        for where in filters:
            texts, values = sql_conditions(account_conditions(where, None))
            conditions.append(texts)
            params += values
        (row,) = self._alone(self._sql.count_where(conditions), params)
        return [int(count) for count in row]

    def find_discrepancies(self, user_id: str | None) -> list[Discrepancy]:
        """Every discrepancy of :meth:`TokenLedger.reconcile`, found by one grouped query."""
        query = self._sql.rendered.discrepancies[user_id is not None]
        rows = self._alone(query, None if user_id is None else {"user_id": user_id})
        return [Discrepancy(row[0], row[1], int(row[2]), int(row[3])) for row in rows]

    def reset_calendar_run(self, run: CalendarResets) -> ResetStep | None:
        """The bulk reset's next run of accounts that need no decision of the domain, in
        one statement (see :class:`CalendarResets`); ``None`` when it lost a race (at
        REPEATABLE READ or SERIALIZABLE, a candidate changed since the snapshot), so
        that a batch of the domain's, which retries, takes over."""
        texts, where = named_conditions(
            account_conditions(AccountFilter(stale=run.cutoffs), run.after_user_id)
        )
        params = {
            **where,
            "limit": run.limit,
            "period_start": run.period_start,
            "now": run.now,
            "earlier": run.earlier,
            "period_start_text": run.period_start_text,
        }
        query = self._sql.calendar_run(texts)
        with self._idle_connection() as conn:
            try:
                row = _alone(conn, query.as_bytes(), params).fetchone()
            except psycopg.Error as error:
                if lost_a_race(error):
                    return None
                raise
        assert row is not None
        chosen, last_chosen, candidates, resets, last_reset, for_the_domain = row
        # a chosen account that a writer reset before it was locked is no candidate: the
        # batch, not its candidates, tells whether accounts are left after it
        short = chosen < run.limit
        if not candidates:
            return ResetStep(last_chosen or run.after_user_id, 0, last=short)
        after = run.after_user_id if last_reset is None else last_reset
        if resets == candidates:
            return ResetStep(after, resets, last=short)
        final = short and resets + for_the_domain == candidates
        return ResetStep(after, resets, False, for_the_domain, final)

    def _read(self, query: sql.Composed, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._alone(query, params)

    def get_account(self, user_id: str) -> TokenAccount | None:
        """The account with its live grants and held reservations, in one snapshot.

        One statement, one round trip, for an account whose row says it has neither;
        for one with grants or holds, a second statement reads the row again with them
        (:data:`~token_ledger._postgres_statements.ONE_ACCOUNT`), so that all of it comes
        from one snapshot still.
        """
        rows = self._alone(self._sql.rendered.select_account, (user_id,))
        if not rows:
            return None
        account = ROWS.account(rows[0])
        if account.grant_balance == 0 and account.reserved_tokens == 0:
            return account
        return read_one_account(self._alone(self._sql.rendered.one_account, {"user_id": user_id}))

    def history(self, query: HistoryQuery) -> list[Transaction]:
        conditions, params = sql_conditions(history_conditions(query))
        statement = self._sql.history_query(conditions)
        return [ROWS.transaction(row) for row in self._alone(statement, [*params, query.limit])]

    def count_transactions(self, query: HistoryQuery) -> int:
        conditions, params = sql_conditions(history_conditions(attrs.evolve(query, before_id=None)))
        return int(self._alone(self._sql.count_query(conditions), params)[0][0])

    def count_accounts(self) -> int:
        return int(self._alone(self._sql.rendered.count_accounts, ())[0][0])

    def notifications(self, after: int, limit: int) -> list[Notification]:
        rows = self._alone(self._sql.notifications_after, (after, limit))
        return [ROWS.notification(row) for row in rows]

    def notification_cursor(self, consumer: str) -> int:
        rows = self._alone(self._sql.cursor_position, (consumer,))
        return 0 if not rows else int(rows[0][0])

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        """One grouped query, by the local day or month (see :mod:`token_ledger._usage_sql`)."""
        statement, params = self._sql.usage_query(query)
        return rows_of(query, self._alone(statement, params))

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        conditions, params = sql_conditions(account_conditions(where, after_user_id))
        query = self._sql.accounts_with_balances(conditions)
        return [read_with_balances(row) for row in self._alone(query, [*params, limit])]

    def close(self) -> None:
        """Close the pool made from a URL; a pool or connection you passed stays open."""
        if self._owned_pool is not None:
            self._owned_pool.close()
