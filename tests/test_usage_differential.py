"""Every engine gives the usage report the in-memory engine gives, for random histories.

The entries go in through the port (``append_transactions``), so a history can hold any mix
of operation types, refusals, features, huge amounts and instants; the same entries go to
every engine in the same order, and each generated query must then be answered alike. The
instants cluster around New York's and Berlin's spring-forward days and a new year, with some
anywhere from 1972 to 2100 (before 1970, PostgreSQL's time zone database and Python's differ
for some zones).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends import BACKENDS, RepositoryFactory
from token_ledger.repository import USAGE_GROUPS, TokenRepository, UsageQuery
from token_ledger.transactions import OperationType, Transaction

pytestmark = pytest.mark.postgres

UTC = timezone.utc
ENGINES = ("memory", "sqlite", "postgres")
ZONES = (
    "UTC",
    "Asia/Kathmandu",  # +05:45
    "Pacific/Chatham",  # +12:45, +13:45 in summer
    "America/St_Johns",  # -03:30, -02:30 in summer
    "Australia/Lord_Howe",  # +10:30, +11:00 in summer: a half-hour DST
    "America/New_York",
    "Europe/Berlin",
)
DAYS = (
    datetime(2026, 3, 8, tzinfo=UTC),
    datetime(2026, 3, 29, tzinfo=UTC),
    datetime(2027, 1, 1, tzinfo=UTC),
)

near_a_change = st.builds(
    lambda day, offset: day + offset,
    st.sampled_from(DAYS),
    st.timedeltas(timedelta(days=-2), timedelta(days=2)),
)
anywhere = st.datetimes(datetime(1972, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC))
instants = st.one_of(near_a_change, near_a_change, anywhere)

entries = st.builds(
    Transaction,
    user_id=st.sampled_from(["a", "B", "é"]),
    operation_type=st.sampled_from(list(OperationType)),
    amount=st.one_of(st.integers(0, 1000), st.just(2**63 - 1)),
    created_at=instants,
    balance_after=st.just(0),
    success=st.booleans(),
    feature=st.sampled_from([None, "chat", "Search", "ü"]),
)


@st.composite
def queries(draw: st.DrawFn) -> UsageQuery:
    since, until = (draw(st.one_of(st.none(), instants)) for _ in range(2))
    if since is not None and until is not None:
        if until == since:
            until = None
        elif until < since:
            since, until = until, since
    by = draw(st.lists(st.sampled_from(USAGE_GROUPS), unique=True))
    if "day" in by and "month" in by:
        by.remove(draw(st.sampled_from(["day", "month"])))
    return UsageQuery(
        since=since,
        until=until,
        by=by,
        user_id=draw(st.one_of(st.none(), st.sampled_from(["a", "é"]))),
        feature=draw(st.one_of(st.none(), st.sampled_from(["chat", "ü"]))),
        time_zone=draw(st.sampled_from(ZONES)),
    )


@pytest.fixture(scope="module")
def repositories(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TokenRepository]]:
    """One repository per engine; every example appends the same entries to each."""
    made: dict[str, TokenRepository] = {}
    for param in BACKENDS:
        if param.id in ENGINES:  # type: ignore[attr-defined]
            factory: RepositoryFactory = param.values[0]  # type: ignore[attr-defined]
            made[param.id] = factory(request, tmp_path_factory.mktemp(param.id))  # type: ignore[attr-defined]
    yield made
    for repository in made.values():
        repository.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(entries, max_size=25), asked=st.lists(queries(), min_size=1, max_size=4))
def test_every_engine_reports_the_usage_the_memory_engine_reports(
    repositories: dict[str, TokenRepository],
    history: list[Transaction],
    asked: list[UsageQuery],
) -> None:
    for repository in repositories.values():
        with repository.unit_of_work() as work:
            work.append_transactions(history)

    for query in asked:
        expected = repositories["memory"].usage(query)
        actual = {name: repository.usage(query) for name, repository in repositories.items()}

        assert actual == dict.fromkeys(repositories, expected), query
