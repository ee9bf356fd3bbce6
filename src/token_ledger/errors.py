"""The exceptions token-ledger raises.

Every error derives from :class:`TokenLedgerError`, so one ``except`` clause
catches anything the library refuses. Errors about bad input also derive from
:class:`ValueError` (and lookups from :class:`LookupError`) so code written
against the builtins keeps working.
"""

from __future__ import annotations


class TokenLedgerError(Exception):
    """Root of every error raised by token-ledger."""


class InvalidInput(TokenLedgerError, ValueError):
    """An argument was refused before anything was written."""


class InvalidAmount(InvalidInput):
    """An amount or limit is not a whole number in the accepted range."""


class NaiveDatetime(InvalidInput):
    """A datetime without a time zone was given where an instant is required."""


class UnknownTimeZone(InvalidInput):
    """A time zone name is not in the IANA database available to Python."""


class AccountNotFound(TokenLedgerError, LookupError):
    """No account exists for the user."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"no token account for user {user_id!r}")
        self.user_id = user_id


class TransactionNotFound(TokenLedgerError, LookupError):
    """No ledger entry has the given id."""

    def __init__(self, transaction_id: int) -> None:
        super().__init__(f"no ledger entry #{transaction_id}")
        self.transaction_id = transaction_id


class ReservationNotFound(TokenLedgerError, LookupError):
    """No reservation has the given id."""

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"no reservation {reservation_id!r}")
        self.reservation_id = reservation_id


class ReservationClosed(TokenLedgerError):
    """The reservation was already committed, released, or has expired."""

    def __init__(self, reservation_id: str, status: str) -> None:
        super().__init__(f"reservation {reservation_id!r} is {status}")
        self.reservation_id = reservation_id
        self.status = status


class GrantNotFound(TokenLedgerError, LookupError):
    """No grant has the given id."""

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"no grant {grant_id!r}")
        self.grant_id = grant_id


class GrantVoided(TokenLedgerError):
    """The grant was voided already: voiding is once, and for good."""

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"grant {grant_id!r} is voided already")
        self.grant_id = grant_id


class AccountExists(TokenLedgerError):
    """An account was opened for a user who already has one."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"a token account already exists for user {user_id!r}")
        self.user_id = user_id


class InsufficientTokens(TokenLedgerError):
    """A deduction asked for more tokens than remain in the period.

    The refusal itself is recorded in the ledger as a failed entry, so that
    operators can see it in the "failed transactions" alert.
    """

    def __init__(
        self, user_id: str, requested: int, remaining: int, refused_by: str | None = None
    ) -> None:
        message = f"user {user_id!r} asked for {requested} tokens but has {remaining} remaining"
        if refused_by is not None:
            message += f": organisation {refused_by!r} has too few left"
        super().__init__(message)
        self.user_id = user_id
        self.requested = requested
        self.remaining = remaining
        self.refused_by = refused_by
        """The organisation whose budget refused a member's spending, if it was one."""


class IdempotencyConflict(TokenLedgerError):
    """An idempotency key was reused for a different operation."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for {detail}")
        self.key = key


class LedgerInvariantError(TokenLedgerError, AssertionError):
    """An operation would have left an account in a state the rules forbid.

    The domain never computes such a state; this error means a bug (or a row
    changed behind the library's back), and nothing was written.
    """


class StorageError(TokenLedgerError):
    """The storage engine failed; the original driver error is the ``__cause__``."""


class TransientStorageError(StorageError):
    """A write lost a race that running it again resolves.

    Serialization failures, deadlocks and an idempotency key taken by a
    concurrent writer roll the whole unit of work back; :class:`~token_ledger.TokenLedger`
    runs it again, with the same instant and idempotency key, a few times
    before letting this error through.
    """


class SchemaVersionError(StorageError):
    """The database was written by a newer token-ledger than this one."""


class ReservationsHeld(TokenLedgerError):
    """An account cannot move to another organisation while it holds reservations: its
    organisation holds a share of each. Commit or release them first."""

    def __init__(self, user_id: str, count: int) -> None:
        held = "a reservation" if count == 1 else f"{count} reservations"
        super().__init__(
            f"account {user_id!r} holds {held}: commit or release them before it moves"
            " (the organisations above an account hold a share of each of its holds)"
        )
        self.user_id = user_id
        self.count = count
