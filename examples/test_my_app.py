"""Property-testing your own code with ``token_ledger.testing``.

``Assistant`` is the kind of code that sits on top of a ``TokenLedger``: it
charges one token per word of a question and, once a user has spent 90% of
the period's allowance, emails them, once per period. That "once per period"
is reset logic of the application's own, and it is easy to get wrong: keyed
by calendar month it breaks for anniversaries and time zones, kept as a flag
it never fires again. The property test below checks it across month ends,
plan changes, resets and clocks that step back, in a few lines.

Run it with ``pytest examples/test_my_app.py`` (hypothesis is needed).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import attrs
from hypothesis import given, settings

from token_ledger import InsufficientTokens, TokenLedger
from token_ledger.testing import MovableClock
from token_ledger.testing.operations import Deduct, Scenario
from token_ledger.testing.strategies import scenarios

FREE_PLAN = 50


@attrs.frozen
class Reply:
    answered: bool
    text: str


class Assistant:
    """Answers questions at one token per word; new users get the free plan."""

    def __init__(self, ledger: TokenLedger, send_email: Callable[[str, str], None]) -> None:
        self.ledger = ledger
        self.send_email = send_email
        self._warned_for: dict[str, datetime] = {}  # user -> start of the period warned about

    def ask(self, user_id: str, question: str) -> Reply:
        self.ledger.ensure_account(user_id, monthly_limit=FREE_PLAN)
        cost = max(1, len(question.split()))
        try:
            result = self.ledger.deduct(user_id, cost, feature="chat")
        except InsufficientTokens:
            renews = self.ledger.status(user_id).next_reset
            return Reply(False, f"Out of tokens until {renews:%B %d}.")
        self._warn_when_running_low(user_id)
        return Reply(True, f"An answer. ({result.monthly_remaining} tokens left)")

    def _warn_when_running_low(self, user_id: str) -> None:
        status = self.ledger.status(user_id)
        running_low = status.monthly_used * 10 >= status.monthly_limit * 9
        if running_low and self._warned_for.get(user_id) != status.period_start:
            self._warned_for[user_id] = status.period_start
            self.send_email(user_id, "You have used 90% of this period's tokens.")


@settings(deadline=None)  # every example runs a ledger: timings vary on a shared CI machine
@given(scenarios())
def test_users_running_low_are_warned_once_per_period(scenario: Scenario) -> None:
    clock = MovableClock(scenario.start)
    ledger = TokenLedger.memory(policy=scenario.policy, clock=clock)
    warnings: list[tuple[str, datetime]] = []

    def send_email(user_id: str, text: str) -> None:
        warnings.append((user_id, ledger.status(user_id).period_start))

    app = Assistant(ledger, send_email)
    for account in scenario.accounts:  # any plan, calendar months or anniversaries
        account.open(ledger)

    for operation in scenario.operations:
        match operation:
            case Deduct(user_id=user_id, amount=words):
                reply = app.ask(user_id, "word " * words)
                status = ledger.status(user_id)
                if reply.answered and status.monthly_used * 10 >= status.monthly_limit * 9:
                    assert (user_id, status.period_start) in warnings
            case _:  # the clock moves, plans change, the monthly job resets
                operation.apply(ledger, clock)

    assert len(warnings) == len(set(warnings)), "a user was warned twice in one period"
