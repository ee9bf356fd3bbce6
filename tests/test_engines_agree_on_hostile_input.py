"""The same call with generated hostile text, integers and contexts has the same
outcome on every engine: the same exception class, or the same result and the
same stored entry."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import BACKENDS, RepositoryFactory
from token_ledger import MonthlyResetPolicy, TokenLedger
from token_ledger.testing import MovableClock

START = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)

pytestmark = pytest.mark.postgres

# Every code point, lone surrogates and NUL included, with the troublemakers often.
hostile_text = st.one_of(
    st.text(st.characters(codec=None, categories=None), max_size=8),
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "é", "x" * 256, "u1"]),
)
hostile_integers = st.one_of(
    st.integers(min_value=-3, max_value=5),
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 10**301]),
    st.integers(),
)
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    hostile_integers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e16, 1e20, 1e308, -0.0, 5e-324, math.nan]),
    hostile_text,
)
hostile_contexts = st.recursive(
    hostile_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(hostile_text, children, max_size=3),
    ),
    max_leaves=8,
)
plain_contexts = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=5),
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children)
        ),
        max_leaves=6,
    ),
    max_size=4,
)

ORDINARY = {
    "user_id": st.sampled_from(["u1", "u2", "ü-3"]),
    "limit": st.integers(1, 100),
    "amount": st.integers(1, 30),
    "feature": st.one_of(st.none(), st.sampled_from(["chat", "search"])),
    "key": st.one_of(st.none(), st.uuids().map(str)),
    "context": st.one_of(st.none(), plain_contexts),
}
HOSTILE = {
    "user_id": hostile_text,
    "limit": hostile_integers,
    "amount": hostile_integers,
    "feature": hostile_text,
    "key": hostile_text,
    "context": hostile_contexts,
}


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    """Ordinary arguments, with at most one of them drawn from hostile values."""
    arguments = {name: draw(strategy) for name, strategy in ORDINARY.items()}
    hostile = draw(st.sampled_from([None, *HOSTILE]))
    if hostile is not None:
        arguments[hostile] = draw(HOSTILE[hostile])
    return arguments


@pytest.fixture(scope="module")
def ledgers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TokenLedger]]:
    """One ledger per engine, each fed the same calls in the same order."""
    made = {}
    for param in BACKENDS:
        factory: RepositoryFactory = param.values[0]  # type: ignore[attr-defined]
        repository = factory(request, tmp_path_factory.mktemp(param.id))  # type: ignore[attr-defined]
        adopt_policy = getattr(repository, "adopt_policy", None)  # see backends.py
        if adopt_policy is not None:
            adopt_policy(MonthlyResetPolicy())
        made[param.id] = TokenLedger(repository, clock=MovableClock(START))  # type: ignore[attr-defined]
    yield made
    for ledger in made.values():
        ledger.close()


def outcome(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        result = function(*args, **kwargs)
    except Exception as error:
        return ("raised", type(error).__name__)
    return ("returned", result.to_dict() if hasattr(result, "to_dict") else None)


def entry_fields(ledger: TokenLedger, user_id: object) -> object:
    """The user's newest entry without what differs by engine (its id)."""
    try:
        entries = ledger.history(user_id)  # type: ignore[arg-type]
    except Exception as error:
        return type(error).__name__
    if not entries:
        return None
    fields = entries[0].to_dict()
    del fields["id"]
    return fields


@settings(max_examples=200)
@given(call=calls())
def test_every_engine_gives_the_same_outcome(
    ledgers: dict[str, TokenLedger], call: dict[str, Any]
) -> None:
    outcomes = {}
    for name, ledger in ledgers.items():
        opened = outcome(ledger.ensure_account, call["user_id"], call["limit"])
        spent = outcome(
            ledger.deduct,
            call["user_id"],
            call["amount"],
            feature=call["feature"],
            context=call["context"],
            idempotency_key=call["key"],
        )
        outcomes[name] = (opened, spent, entry_fields(ledger, call["user_id"]))

    first = outcomes["memory"]
    assert all(other == first for other in outcomes.values()), outcomes


def test_the_engines_still_add_up(ledgers: dict[str, TokenLedger]) -> None:
    for ledger in ledgers.values():
        assert ledger.reconcile() == []
