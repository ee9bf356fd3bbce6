"""The storage port: what an adapter must provide, and nothing about how.

An adapter is whatever passes the contract suite :mod:`token_ledger.testing.contract`. The
domain decides every value that is written; adapters only load, lock and
store, each write inside one unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from token_ledger import _validation
from token_ledger.account import TokenAccount
from token_ledger.errors import InvalidInput
from token_ledger.grants import Grant, Reservation
from token_ledger.policy import check_time_zone
from token_ledger.thresholds import Notification
from token_ledger.transactions import OperationType, Transaction

if TYPE_CHECKING:
    from token_ledger.operations import CalendarResets, DirectDeduction, ResetStep, Spent
    from token_ledger.reconciliation import Discrepancy
    from token_ledger.usage import UsageRow


@attrs.frozen
class StaleCutoffs:
    """Bounds that every stale account falls under, so a store can pre-select them.

    An account on the ledger's calendar (no anchor, no zone of its own) is stale when
    ``last_monthly_reset < calendar``. Any other, "anchored" here, can only be stale when
    ``last_monthly_reset <= anchored``; the domain makes the final decision for those.
    """

    calendar: datetime
    anchored: datetime


@attrs.frozen
class AccountFilter:
    """A pre-selection of accounts that a store can answer from its indexes.

    Stores may return more than match exactly (anchored accounts, accounts
    whose usage belongs to an ended period); the domain makes the decision.
    """

    stale: StaleCutoffs | None = None
    usage_above: float | None = None
    """A fraction of the limit: ``monthly_tokens_used / monthly_limit > usage_above``."""
    current: StaleCutoffs | None = None
    """The accounts ``stale`` would not pre-select: those no reset can be pending for."""
    anchored: bool | None = None
    """Only accounts off the ledger's calendar (``True``: a ``reset_anchor`` or a
    ``time_zone`` of their own) or only those on it (``False``).

    On the ledger's calendar, ``stale`` and ``current`` are exact, so a store can count
    those accounts by itself; the others need the domain's decision.
    """


MAX_HISTORY_LIMIT = 10_000


def _operation_type(value: object) -> OperationType | None:
    if value is None or isinstance(value, OperationType):
        return value
    try:
        return OperationType(value)
    except ValueError:
        known = ", ".join(member.value for member in OperationType)
        raise InvalidInput(f"operation_type must be one of {known}, got {value!r}") from None


def _check_limit(_query: object, _attribute: object, value: object) -> None:
    _validation.positive_int(value, "limit")
    if value > MAX_HISTORY_LIMIT:  # type: ignore[operator]  # an int, checked above
        raise InvalidInput(f"limit must be at most {MAX_HISTORY_LIMIT}, got {value}")


def _checked(check: Callable[[object, str], object]) -> Callable[[object, Any, object], None]:
    """An attrs validator that runs ``check`` with the field's name."""

    def validate(_query: object, attribute: Any, value: object) -> None:
        check(value, attribute.name)

    return validate


def _since(value: object) -> datetime | None:
    return _validation.optional_instant(value, "since")


def _until(value: object) -> datetime | None:
    return _validation.optional_instant(value, "until")


@attrs.frozen
class HistoryQuery:
    """Filters for :meth:`TokenRepository.history`; results are newest first.

    ``before_id`` pages by keyset: pass the ``id`` of the last entry of the
    previous page. Every filter is checked here, once, so that no engine is
    handed a value it would read differently (``success="yes"`` would be true
    on one engine, an error on another, and match nothing on a third).
    """

    user_id: str | None = attrs.field(
        default=None, validator=_checked(_validation.optional_identifier)
    )
    operation_type: OperationType | None = attrs.field(default=None, converter=_operation_type)
    feature: str | None = attrs.field(
        default=None, validator=_checked(_validation.optional_identifier)
    )
    success: bool | None = attrs.field(default=None, validator=_checked(_validation.optional_bool))
    since: datetime | None = attrs.field(default=None, converter=_since)
    until: datetime | None = attrs.field(default=None, converter=_until)
    before_id: int | None = attrs.field(
        default=None, validator=_checked(_validation.optional_positive_int)
    )
    reference: str | None = attrs.field(
        default=None, validator=_checked(_validation.optional_identifier)
    )
    limit: int = attrs.field(default=100, validator=_check_limit)


USAGE_GROUPS = ("user", "feature", "day", "month")
"""What :class:`UsageQuery` groups by, in the order its rows' keys are listed."""


def _usage_groups(value: object) -> tuple[str, ...]:
    """Group keys among :data:`USAGE_GROUPS`, each at most once, ``day`` or ``month``."""
    keys = (value,) if isinstance(value, str) else value
    known = ", ".join(USAGE_GROUPS)
    if not isinstance(keys, tuple | list):
        raise InvalidInput(f"by must be a group key or a sequence of them ({known}), got {value!r}")
    for key in keys:
        if key not in USAGE_GROUPS:
            raise InvalidInput(f"by takes {known}; got {key!r}")
    if len(set(keys)) != len(keys):
        raise InvalidInput(f"by names a group key twice: {value!r}")
    if "day" in keys and "month" in keys:
        raise InvalidInput("by takes day or month, not both")
    return tuple(key for key in USAGE_GROUPS if key in keys)


def _until_after_since(query: UsageQuery, _attribute: object, value: datetime | None) -> None:
    if value is not None and query.since is not None and value <= query.since:
        raise InvalidInput(
            f"until must be after since, got since={query.since.isoformat()}"
            f" until={value.isoformat()}"
        )


@attrs.frozen
class UsageQuery:
    """What :meth:`TokenRepository.usage` adds up: tokens spent, net of refunds, by group.

    Entries counted: successful ``deduct`` and ``commit`` entries (``spent``) and ``refund``
    entries (``refunded``), each in the bucket of its own ``created_at``: a refund counts
    when it is made, so a day's net can be negative. ``since`` is inclusive and ``until``
    exclusive, as in :class:`HistoryQuery`; ``by`` holds group keys of :data:`USAGE_GROUPS`
    (kept in that order); ``day`` and ``month`` are local to ``time_zone``. Tokens are
    counted where they were spent, once: an organisation's shares of its members' spending
    (entries with a ``member_entry_id``) are left out, unless ``organisation`` asks for
    what that budget paid. Every field is checked here, once, so that every engine is
    handed the same, valid question.
    """

    since: datetime | None = attrs.field(default=None, converter=_since)
    until: datetime | None = attrs.field(
        default=None, converter=_until, validator=_until_after_since
    )
    by: tuple[str, ...] = attrs.field(default=(), converter=_usage_groups)
    user_id: str | None = attrs.field(
        default=None, validator=_checked(_validation.optional_identifier)
    )
    feature: str | None = attrs.field(
        default=None, validator=_checked(_validation.optional_identifier)
    )
    time_zone: str = attrs.field(default="UTC", validator=check_time_zone)
    organisation: str | None = attrs.field(
        default=None, validator=_checked(_validation.optional_identifier)
    )
    """Count what this account's budget paid instead: its own spending and its shares of
    its members', each under the member's ``user_id`` (the one who spent, then)."""

    @property
    def bucket(self) -> str | None:
        """``"day"``, ``"month"``, or ``None`` when the rows are not split in time."""
        return next((key for key in self.by if key in ("day", "month")), None)


class UnitOfWork(Protocol):
    """One write transaction: all of it is stored, or none of it.

    Accounts returned by ``load_account`` and ``lock_stale_candidates`` stay
    locked against concurrent writers until the unit of work ends.
    """

    def load_account(self, user_id: str) -> TokenAccount | None:
        """The account with its live grants (``remaining > 0``) and held reservations."""
        ...

    def load_path(self, user_id: str) -> list[TokenAccount]:
        """The account and the organisations above it, root first, each as
        ``load_account`` returns it and locked in that order (root first); ``[]`` when the
        account does not exist. A path longer than
        :data:`~token_ledger.organisations.MAX_DEPTH` is cut there."""
        ...

    def members_of(self, user_id: str) -> list[str]:
        """The ids of the accounts whose ``organisation_id`` is ``user_id``, read, not locked."""
        ...

    def insert_account(self, account: TokenAccount) -> bool:
        """Store a new account; ``False`` (and no write) if the user already has one."""
        ...

    def save_accounts(self, accounts: Sequence[TokenAccount]) -> None:
        """Store the accounts' own columns; grants and holds are saved on their own."""
        ...

    def save_grants(self, grants: Sequence[Grant]) -> None:
        """Insert new grants and update the ``remaining`` of known ones."""
        ...

    def save_reservations(self, reservations: Sequence[Reservation]) -> None:
        """Insert new reservations and update the ``status`` of known ones."""
        ...

    def find_transaction(self, transaction_id: int) -> Transaction | None: ...

    def entries_referencing(self, reference: str) -> list[Transaction]:
        """Entries whose ``reference`` is ``reference``, oldest first."""
        ...

    def find_reservation(self, reservation_id: str) -> Reservation | None: ...

    def reset_after(self, user_id: str, entry_id: int) -> bool:
        """Whether a ``reset`` entry of ``user_id`` was stored after entry ``entry_id``."""
        ...

    def entries_mirroring(self, entry_id: int) -> list[Transaction]:
        """The organisations' shares of a member's entry (``member_entry_id = entry_id``),
        by id: root first."""
        ...

    def find_grant(self, grant_id: str) -> Grant | None:
        """The grant's row, whatever is left of it: spent, expired and voided ones too."""
        ...

    def append_transactions(self, entries: Sequence[Transaction]) -> list[Transaction]:
        """Store entries in order and return them with their ``id`` assigned."""
        ...

    def find_by_idempotency_key(self, key: str) -> Transaction | None: ...

    def lock_stale_candidates(
        self, cutoffs: StaleCutoffs, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        """Up to ``limit`` possibly stale accounts, by ``user_id`` after ``after_user_id``.

        A store that locks rows locks them root first (organisations before their
        members, as the tree stands), the order in which writers of a path take them.
        """
        ...

    def append_notifications(self, notifications: Sequence[Notification]) -> list[Notification]:
        """Store notifications in order; return them with ``id`` and ``occurrence`` assigned.

        Ids grow in the order notifications commit, across every writer: a reader that
        sees one sees every smaller id that will ever be stored (PostgreSQL serializes
        the writes that record one). ``occurrence`` is one more than the notifications
        of the same user, threshold and period stored before; the pair is unique, so two
        writers that both saw the same crossing cannot both store it.
        """
        ...

    def last_notification_id(self) -> int:
        """The highest notification id stored, 0 when there is none."""
        ...

    def advance_notification_cursor(self, consumer: str, up_to: int) -> int:
        """Move ``consumer``'s cursor to ``up_to`` unless it is further already; the result."""
        ...


SHORTCUT_METHODS = (
    "deduct_directly",
    "count_accounts_where",
    "find_discrepancies",
    "reset_calendar_run",
)
"""Optional methods of a repository, which the facade uses when present, for shortcuts.

An adapter may offer any of them (:class:`Shortcuts` says what each one does); one
that lacks a method, or has it set to ``None``, gets the same answers by the way
every adapter has. The contract suite and the shortcut tests hold both ways to the
same rows and results.
"""


class Shortcuts(Protocol):
    """What the optional methods of :data:`SHORTCUT_METHODS` do; no adapter has to offer them.

    Each answers like the operations they shortcut, and ``None`` where it does not
    cover the case: the facade then runs the operation itself.
    """

    def deduct_directly(self, deduction: DirectDeduction) -> Spent | None:
        """Apply ``deduction`` if its account is as :class:`~token_ledger.operations.
        DirectDeduction` describes, in one transaction: the usage and the entry."""
        ...

    def count_accounts_where(self, filters: Sequence[AccountFilter]) -> list[int]:
        """How many accounts match each of ``filters``, exactly as its conditions say."""
        ...

    def find_discrepancies(self, user_id: str | None) -> list[Discrepancy] | None:
        """What :func:`token_ledger.reads.reconcile` finds, for one account or all, in its
        order: each stored figure the successful entries' effects do not add up to."""
        ...

    def reset_calendar_run(self, run: CalendarResets) -> ResetStep | None:
        """The resets of :class:`~token_ledger.operations.CalendarResets`, in one transaction."""
        ...


class TokenRepository(Protocol):
    """Where accounts and ledger entries live.

    Every account a repository returns carries its live grants and held
    reservations, so that the domain sees the whole of a user's balance.
    """

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """Commit on a clean exit, roll back when the block raises."""
        ...

    def get_account(self, user_id: str) -> TokenAccount | None:
        """Read without locking; the value may be stale as soon as it is returned."""
        ...

    def history(self, query: HistoryQuery) -> list[Transaction]: ...

    def count_transactions(self, query: HistoryQuery) -> int:
        """How many entries ``history`` would return without ``limit`` and ``before_id``."""
        ...

    def count_accounts(self) -> int: ...

    def notifications(self, after: int, limit: int) -> list[Notification]:
        """Up to ``limit`` notifications with an id above ``after``, by id."""
        ...

    def notification_cursor(self, consumer: str) -> int:
        """Where ``consumer`` acknowledged up to; 0 for a consumer never seen."""
        ...

    def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Tokens spent net of refunds per group of ``query.by``, added up by the store (one
        grouped query), in the order of :func:`token_ledger.usage.ordered`."""
        ...

    def scan_accounts(
        self, where: AccountFilter, after_user_id: str | None, limit: int
    ) -> list[TokenAccount]:
        """Up to ``limit`` accounts matching ``where``, by ``user_id`` after ``after_user_id``."""
        ...

    def close(self) -> None: ...
