"""What a property test does to a ledger, as values.

:mod:`token_ledger.testing.strategies` generates these. As frozen values they
print readably in the failing example hypothesis reports, and ``match`` takes
them apart, so a test can map them onto its own application's calls; ``apply``
performs one directly on a :class:`~token_ledger.TokenLedger`.

>>> from datetime import datetime, timedelta, timezone
>>> scenario = Scenario(
...     policy=MonthlyResetPolicy(),
...     start=datetime(2026, 1, 31, 12, tzinfo=timezone.utc),
...     accounts=(AccountSpec("alice", 10),),
...     operations=(Deduct("alice", 8), MoveClock(timedelta(days=1)), Deduct("alice", 8)),
... )
>>> ledger, clock = scenario.open_ledger()
>>> for operation in scenario.operations:
...     operation.apply(ledger, clock)
>>> ledger.status("alice").monthly_used  # February's allowance is whole again
8
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeAlias

import attrs

from token_ledger.account import TokenAccount
from token_ledger.application import TokenLedger
from token_ledger.errors import IdempotencyConflict, InsufficientTokens
from token_ledger.policy import MonthlyResetPolicy
from token_ledger.testing import MovableClock


@attrs.frozen
class AccountSpec:
    """An account to open: the arguments of :meth:`TokenLedger.open_account`."""

    user_id: str
    monthly_limit: int
    reset_anchor: datetime | None = None

    def open(self, ledger: TokenLedger) -> TokenAccount:
        return ledger.open_account(self.user_id, self.monthly_limit, reset_anchor=self.reset_anchor)


@attrs.frozen
class Deduct:
    """Spend ``amount`` tokens; ``apply`` treats a refusal as an outcome, not a failure.

    ``InsufficientTokens`` and ``IdempotencyConflict`` are what a correct
    ledger answers to some of the deductions a test generates, so ``apply``
    swallows them (the refusal is still recorded or replayed as usual).
    """

    user_id: str
    amount: int
    feature: str | None = None
    idempotency_key: str | None = None

    def apply(self, ledger: TokenLedger, clock: MovableClock) -> None:
        with contextlib.suppress(InsufficientTokens, IdempotencyConflict):
            ledger.deduct(
                self.user_id,
                self.amount,
                feature=self.feature,
                idempotency_key=self.idempotency_key,
            )


@attrs.frozen
class SetLimit:
    """Change a user's limit, as a plan upgrade or downgrade does."""

    user_id: str
    monthly_limit: int

    def apply(self, ledger: TokenLedger, clock: MovableClock) -> None:
        ledger.set_limit(self.user_id, self.monthly_limit)


@attrs.frozen
class ResetIfNeeded:
    """Persist the user's pending reset, as the seed's ``reset_user_tokens_if_needed``."""

    user_id: str

    def apply(self, ledger: TokenLedger, clock: MovableClock) -> None:
        ledger.reset_if_needed(self.user_id)


@attrs.frozen
class ResetAllStale:
    """Persist every pending reset, as the seed's monthly cron job does."""

    def apply(self, ledger: TokenLedger, clock: MovableClock) -> None:
        ledger.reset_all_stale()


@attrs.frozen
class MoveClock:
    """Let time pass (or, with a negative ``delta``, step the clock back as NTP may)."""

    delta: timedelta

    def apply(self, ledger: TokenLedger, clock: MovableClock) -> None:
        clock.advance(self.delta)


@attrs.frozen
class MoveToReset:
    """Set the clock to the user's next reset plus ``offset``: just before it, or just after.

    Reset bugs live at that boundary, and only the policy and the user's
    anchor know where it is, so a fixed clock move rarely lands there.
    """

    user_id: str
    offset: timedelta

    def apply(self, ledger: TokenLedger, clock: MovableClock) -> None:
        clock.set(ledger.status(self.user_id).next_reset + self.offset)


Operation: TypeAlias = Deduct | SetLimit | ResetIfNeeded | ResetAllStale | MoveClock | MoveToReset
"""Anything a generated sequence does; take it apart with ``match``."""


@attrs.frozen
class Scenario:
    """A policy, a start instant, the accounts open then, and what happens next."""

    policy: MonthlyResetPolicy
    start: datetime
    accounts: tuple[AccountSpec, ...]
    operations: tuple[Operation, ...]

    def open_ledger(
        self, make_ledger: Callable[..., TokenLedger] = TokenLedger.memory
    ) -> tuple[TokenLedger, MovableClock]:
        """A ledger at ``start`` with the accounts open, and the clock that drives it.

        ``make_ledger`` is called with ``policy=`` and ``clock=``, e.g.
        ``functools.partial(TokenLedger.sqlite, ":memory:")``.
        """
        clock = MovableClock(self.start)
        ledger = make_ledger(policy=self.policy, clock=clock)
        for account in self.accounts:
            account.open(ledger)
        return ledger, clock
