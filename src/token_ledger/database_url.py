"""One reading of a database URL, shared by the library, the command line and the service.

Accepted, and nothing else:

``postgresql://...`` or ``postgres://...``
    PostgreSQL; the URL is passed to psycopg unchanged.
``sqlite:///relative/path``, ``sqlite:////absolute/path``
    A SQLite file, spelled as SQLAlchemy spells it.
``sqlite://:memory:`` or ``sqlite:///:memory:``
    A SQLite database in memory, gone when it is closed.
a file path (no ``scheme://``)
    A SQLite file: ``tokens.db``, ``/var/lib/app/tokens.db``.
``memory://``
    A ledger held in this process only (:meth:`TokenLedger.memory`).

Any other scheme (``mysql://``, ``postgresql+psycopg2://``) is refused rather
than taken for a file name, as is a path that starts like one (``memory:``,
``sqlite:/x.db``). Drivers are imported only when a ledger is opened.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from token_ledger.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Iterable

    from token_ledger.application import TokenLedger
    from token_ledger.clock import Clock
    from token_ledger.policy import MonthlyResetPolicy
    from token_ledger.thresholds import Threshold

Engine = Literal["memory", "sqlite", "postgres"]

ACCEPTED = (
    "postgresql://..., postgres://..., sqlite:///relative/path, sqlite:////absolute/path,"
    " sqlite:///:memory:, memory://, or a SQLite file path"
)
SQLITE_MEMORY = ":memory:"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")
_SQLITE_PREFIX = "sqlite://"
_MEMORY_URL = "memory://"
_KNOWN_SCHEMES = ("memory", "sqlite", "postgres", "postgresql")
# A URL scheme (RFC 3986) of two characters or more, so a drive letter (C:/) is a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):")
_PASSWORD = re.compile(r"(://[^/?#@:]*:)[^/?#@]*@")


class DatabaseNotFound(InvalidInput):
    """``create=False`` and the URL names no existing ledger (a missing SQLite file)."""

    def __init__(self, url: DatabaseURL) -> None:
        if url.in_memory:
            detail = "an in-memory ledger is always new and empty"
        else:
            detail = f"no SQLite file at {url.target!r}"
        super().__init__(f"{detail}, and the ledger may not be created here")
        self.url = url


@attrs.frozen(repr=False)
class DatabaseURL:
    """What a database URL names: an ``engine`` and its ``target``.

    ``target`` is the PostgreSQL URL as given, the SQLite file name (or
    ``":memory:"``), or ``""`` for ``memory://``. The repr hides a password.
    """

    engine: Engine
    target: str

    @property
    def in_memory(self) -> bool:
        """Whether the ledger lives only as long as this process holds it open."""
        return self.engine == "memory" or (self.engine == "sqlite" and self.target == SQLITE_MEMORY)

    def __repr__(self) -> str:
        return f"DatabaseURL(engine={self.engine!r}, target={_redacted(self.target)!r})"


def parse_database_url(url: object) -> DatabaseURL:
    """Read ``url``; :class:`~token_ledger.errors.InvalidInput` says what is accepted otherwise."""
    if not isinstance(url, str):
        raise InvalidInput(
            f"a database URL must be a string ({ACCEPTED}), got {type(url).__name__}"
        )
    if not url.strip():
        raise InvalidInput(f"the database URL is empty: give {ACCEPTED}")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            "the database URL must be valid Unicode text (it has a lone surrogate)"
        ) from None
    if "\x00" in url:
        raise InvalidInput("the database URL must not contain a NUL character")
    if url != url.strip():
        raise InvalidInput("the database URL has leading or trailing whitespace")
    if url.startswith(_POSTGRES_PREFIXES):
        return DatabaseURL("postgres", url)
    if url.startswith(_SQLITE_PREFIX):
        return DatabaseURL("sqlite", _sqlite_target(url))
    if url == _MEMORY_URL:
        return DatabaseURL("memory", "")
    scheme = _SCHEME.match(url)
    if scheme is not None and url[scheme.end() :].startswith("//"):
        if scheme.group(1) == "memory":
            raise InvalidInput(f"memory:// takes nothing after it: give {ACCEPTED}")
        raise InvalidInput(f"unsupported database URL scheme {scheme.group(1)}://: give {ACCEPTED}")
    if "://" in url:
        raise InvalidInput(f"the database URL is neither a URL nor a file path: give {ACCEPTED}")
    if scheme is not None and (
        scheme.group(1).lower() in _KNOWN_SCHEMES or url[scheme.end() :].startswith("/")
    ):
        raise InvalidInput(
            f"the database URL starts with {scheme.group(1)}: but is no URL: give {ACCEPTED}"
            " (write ./NAME for a SQLite file whose name has a colon)"
        )
    return DatabaseURL("sqlite", url)


def open_ledger(
    cls: type[TokenLedger],
    url: str,
    *,
    create: bool,
    policy: MonthlyResetPolicy | None,
    clock: Clock,
    thresholds: Iterable[Threshold] = (),
) -> TokenLedger:
    """The ledger ``url`` names, through ``cls.memory``, ``cls.sqlite`` or ``cls.postgres``.

    With ``create=False`` only a ledger that exists already is opened: a
    missing SQLite file (or an in-memory database, always new) raises
    :class:`DatabaseNotFound`, where a mistyped path would otherwise open a
    new, empty ledger. A PostgreSQL database is opened either way.
    """
    parsed = parse_database_url(url)
    if not create and parsed.in_memory:
        raise DatabaseNotFound(parsed)
    if parsed.engine == "memory":
        return cls.memory(policy=policy, clock=clock, thresholds=thresholds)
    if parsed.engine == "postgres":
        return cls.postgres(parsed.target, policy=policy, clock=clock, thresholds=thresholds)
    if not create and not Path(parsed.target).is_file():
        raise DatabaseNotFound(parsed)
    return cls.sqlite(parsed.target, policy=policy, clock=clock, thresholds=thresholds)


def _sqlite_target(url: str) -> str:
    """``sqlite:///tokens.db`` -> ``tokens.db``, ``sqlite:////srv/t.db`` -> ``/srv/t.db``."""
    rest = url[len(_SQLITE_PREFIX) :]
    if rest in (SQLITE_MEMORY, "/" + SQLITE_MEMORY):
        return SQLITE_MEMORY
    if not rest.startswith("/"):
        raise InvalidInput(
            f"a sqlite:// URL names no host: write sqlite:///relative/path,"
            f" sqlite:////absolute/path or sqlite:///:memory:, got {url!r}"
        )
    path = rest[1:]
    if not path:
        raise InvalidInput(
            "sqlite:/// needs a path: write sqlite:///relative/path,"
            " sqlite:////absolute/path or sqlite:///:memory:"
        )
    if "?" in path:
        raise InvalidInput(f"a sqlite:// URL takes no query options, got {url!r}")
    return path


def _redacted(target: str) -> str:
    return _PASSWORD.sub(r"\1***@", target)
