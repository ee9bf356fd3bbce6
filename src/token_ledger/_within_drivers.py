"""What the caller passed to ``ledger.within``, resolved to its driver's connection.

A psycopg 3 or ``sqlite3`` connection is taken as it is; a ``sqlite_utils.Database``, a
SQLAlchemy 2 ``Connection`` or ``Session`` and Django's connection are followed to the
driver connection underneath (SQLAlchemy's transaction begun if none is, Django's required
to be inside ``atomic()``), which its engine's module then joins
(:mod:`token_ledger._within_sqlite`, :mod:`token_ledger._within_postgres`). psycopg,
SQLAlchemy and Django are never imported here: they are found in ``sys.modules``, where
the application that made the connection put them.
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import sqlite_utils

from token_ledger import _validation
from token_ledger._within_errors import TransactionRequired, UnsupportedConnection
from token_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from token_ledger.application import TokenLedger
    from token_ledger.within import CallerTransaction

Joined = tuple["CallerTransaction", "Callable[[], object] | None"]
"""The engine's caller transaction, and what to do before each call (a Session's flush)."""

_ACCEPTED = (
    "a psycopg (3) Connection, a sqlite3.Connection or sqlite_utils.Database, a SQLAlchemy 2"
    " Connection or Session (postgresql+psycopg or sqlite), or Django's connection inside"
    " transaction.atomic() (PostgreSQL on psycopg 3, or SQLite)"
)
_PSYCOPG2 = (
    "psycopg2 connections are not supported: token-ledger speaks psycopg 3. Connect with"
    ' psycopg.connect(...) (pip install "token-ledger[postgres]"), use SQLAlchemy\'s'
    " postgresql+psycopg:// dialect, or install psycopg 3, which Django 4.2+ then uses"
)
_ASYNC = (
    "is an asyncio connection, and ledger.within() runs synchronously: pass a synchronous"
    f" one ({_ACCEPTED})"
)


@attrs.frozen
class _Driver:
    """What the caller passed, reduced to its driver's connection."""

    connection: object
    origin: str  # how to name what the caller passed, in messages
    before_call: Callable[[], object] | None = None


def join(ledger: TokenLedger, connection: object, schema: str | None) -> Joined:
    """The caller's transaction on ``connection``, joined by its engine's module (imported
    only now: the PostgreSQL one imports psycopg), or the error that says what to pass."""
    driver = _driver_of(connection)
    raw = driver.connection
    if isinstance(raw, sqlite3.Connection):
        if schema is not None:
            raise InvalidInput(
                "schema is for PostgreSQL: on SQLite the ledger's tables are in the"
                f" connection's main database, got schema={schema!r}"
            )
        from token_ledger._within_sqlite import SQLiteCallerTransaction

        return SQLiteCallerTransaction.join(raw, driver.origin), driver.before_call
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        if isinstance(raw, psycopg.Connection):
            from token_ledger._within_postgres import PostgresCallerTransaction

            joined = PostgresCallerTransaction.join(raw, _schema_of(ledger, schema))
            return joined, driver.before_call
        if isinstance(raw, psycopg.AsyncConnection):
            raise UnsupportedConnection(f"{driver.origin} {_ASYNC}")
    if type(raw).__module__.partition(".")[0] == "psycopg2":
        raise UnsupportedConnection(f"{driver.origin} is a psycopg2 connection: {_PSYCOPG2}")
    if raw is not connection:
        kind = f"{type(raw).__module__}.{type(raw).__qualname__}"
        raise UnsupportedConnection(
            f"{driver.origin} runs on a {kind} driver connection; within() takes {_ACCEPTED}"
        )
    raise UnsupportedConnection(f"within() takes {_ACCEPTED}; got {driver.origin}")


def _driver_of(connection: object) -> _Driver:
    if isinstance(connection, sqlite_utils.Database):
        return _Driver(connection.conn, "sqlite_utils.Database")
    modules = {cls.__module__.partition(".")[0] for cls in type(connection).__mro__}
    if "django" in modules:
        return _django_driver(connection)
    if "sqlalchemy" in modules:
        return _sqlalchemy_driver(connection)
    return _Driver(connection, f"a {type(connection).__module__}.{type(connection).__qualname__}")


def _schema_of(ledger: TokenLedger, schema: str | None) -> str:
    """``schema``, or the ledger's own PostgreSQL schema, or ``public``."""
    if schema is not None:
        return _validation.schema_name(schema)
    from token_ledger.postgres import PostgresRepository

    repository = ledger.repository
    return repository._schema if isinstance(repository, PostgresRepository) else "public"


def _version(text: str) -> tuple[int, int]:
    major, _, rest = text.partition(".")
    minor = "".join(itertools.takewhile(str.isdigit, rest))
    return int(major or 0), int(minor or 0)


def _sqlalchemy_driver(connection: object) -> _Driver:
    """The driver connection of a SQLAlchemy ``Connection`` or ``Session``, in a transaction.

    SQLAlchemy begins a transaction on first use and ends it at ``commit()`` or
    ``rollback()``: when none is open yet it is begun here, so that those include
    the ledger's statements. A ``Session`` is flushed before each call (as its
    autoflush would before a query, unless autoflush is off), so that the
    database has its pending objects first.
    """
    sqlalchemy: Any = sys.modules["sqlalchemy"]
    if _version(str(sqlalchemy.__version__)) < (2, 0):
        raise UnsupportedConnection(
            f"SQLAlchemy {sqlalchemy.__version__} is too old: within() needs SQLAlchemy 2.0"
            " or later"
        )
    name = type(connection).__name__
    origin = f"SQLAlchemy's {name}"
    asyncio_api: Any = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_api is not None and isinstance(
        connection, asyncio_api.AsyncConnection | asyncio_api.AsyncSession
    ):
        raise UnsupportedConnection(f"{origin} {_ASYNC}")
    orm: Any = sys.modules.get("sqlalchemy.orm")
    target: Any = connection
    before_call: Callable[[], object] | None = None
    if orm is not None and isinstance(target, orm.scoped_session):
        target = target()
    if orm is not None and isinstance(target, orm.Session):
        session = target

        def flush() -> None:
            if session.autoflush:
                session.flush()

        flush()
        before_call = flush
        target = session.connection()
    if isinstance(target, sqlalchemy.engine.Engine):
        raise UnsupportedConnection(
            "a SQLAlchemy Engine has no transaction: pass the Connection your transaction is"
            " on (with engine.begin() as conn: ...) or your Session"
        )
    if not isinstance(target, sqlalchemy.engine.Connection):
        raise UnsupportedConnection(f"within() takes {_ACCEPTED}; got {origin}")
    if not target.in_transaction():
        target.begin()
    return _Driver(target.connection.driver_connection, origin, before_call)


def _django_driver(connection: object) -> _Driver:
    """The driver connection under Django's, which must be inside ``transaction.atomic()``.

    Outside ``atomic()`` Django commits every statement on its own; inside it the
    transaction and its COMMIT are Django's, and the ledger's statements go
    through the driver connection underneath, in savepoints of that transaction.
    """
    django: Any = sys.modules["django"]
    base: Any = sys.modules.get("django.db.backends.base.base")
    proxies: Any = sys.modules.get("django.utils.connection")
    wrappers: tuple[type, ...] = ()
    if base is not None:
        wrappers += (base.BaseDatabaseWrapper,)
    if proxies is not None:
        wrappers += (proxies.ConnectionProxy,)
    if not wrappers or not isinstance(connection, wrappers):
        raise UnsupportedConnection(
            f"within() takes {_ACCEPTED}; got Django's {type(connection).__qualname__}"
        )
    if tuple(django.VERSION[:2]) < (4, 2):
        raise UnsupportedConnection(
            f"Django {django.get_version()} is too old: within() needs Django 4.2 or later"
        )
    wrapper: Any = connection
    if wrapper.vendor not in ("postgresql", "sqlite"):
        raise UnsupportedConnection(
            f"Django's {wrapper.vendor} connection is not supported: within() joins PostgreSQL"
            " (on psycopg 3) and SQLite"
        )
    if not wrapper.in_atomic_block:
        raise TransactionRequired(
            "Django's connection is in autocommit mode, which commits every statement on its"
            " own: call ledger.within(connection) inside `with transaction.atomic():`"
        )
    if wrapper.needs_rollback:
        raise TransactionRequired(
            "this transaction.atomic() block has failed and will roll back: let the error"
            " leave the block, then run the whole block again"
        )
    wrapper.ensure_connection()
    return _Driver(wrapper.connection, "Django's connection")
