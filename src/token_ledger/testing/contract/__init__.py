"""The contract every storage adapter passes: an adapter is whatever passes it.

Subclass :class:`RepositoryContract` in a test module of your own, return a
new, empty repository from ``create_repository``, and pytest runs the whole
contract against it::

    from token_ledger.testing.contract import RepositoryContract

    class TestMyRepository(RepositoryContract):
        def create_repository(self, directory):
            return MyRepository(directory / "x.db")

Tests go through the :class:`~token_ledger.TokenLedger` facade and through
the port itself (:class:`~token_ledger.repository.TokenRepository`,
:class:`~token_ledger.repository.UnitOfWork`). The other hooks are
:meth:`~ContractBase.adopt_policy`, for engines with reset rules of their
own, and :attr:`~ContractBase.unsupported`, which skips named tests with a
reason that ``pytest -ra`` shows. Each topic is a mixin of its own
(:class:`DeductContract`, ...) for running part of the contract.

This module needs pytest (``pip install token-ledger[test]`` or just
``pytest``); nothing else in token-ledger imports it. Its import path and the
names below are public API; the modules inside it are not.
"""

from __future__ import annotations

import pytest

# Before the topic modules are imported: a failing assert then shows both sides.
pytest.register_assert_rewrite(
    *(
        f"token_ledger.testing.contract.{name}"
        for name in (
            "accounts",
            "bad_input",
            "base",
            "credits",
            "deduct",
            "entitlements",
            "history",
            "hostile_input",
            "monitoring",
            "notifications",
            "organisations",
            "repository_port",
            "resets",
            "returned_values",
            "unit_of_work",
            "usage",
            "values",
            "windows",
        )
    )
)

from token_ledger.testing.contract.accounts import AccountsContract  # noqa: E402
from token_ledger.testing.contract.bad_input import BadInputContract  # noqa: E402
from token_ledger.testing.contract.base import (  # noqa: E402
    START,
    ContractBase,
    LedgerFactory,
    RepositoryFactory,
)
from token_ledger.testing.contract.credits import CreditsContract  # noqa: E402
from token_ledger.testing.contract.deduct import DeductContract  # noqa: E402
from token_ledger.testing.contract.entitlements import EntitlementsContract  # noqa: E402
from token_ledger.testing.contract.history import HistoryContract  # noqa: E402
from token_ledger.testing.contract.hostile_input import HostileInputContract  # noqa: E402
from token_ledger.testing.contract.monitoring import MonitoringContract  # noqa: E402
from token_ledger.testing.contract.notifications import NotificationsContract  # noqa: E402
from token_ledger.testing.contract.organisations import OrganisationsContract  # noqa: E402
from token_ledger.testing.contract.repository_port import RepositoryPortContract  # noqa: E402
from token_ledger.testing.contract.resets import ResetsContract  # noqa: E402
from token_ledger.testing.contract.returned_values import ReturnedValuesContract  # noqa: E402
from token_ledger.testing.contract.unit_of_work import UnitOfWorkContract  # noqa: E402
from token_ledger.testing.contract.usage import UsageContract  # noqa: E402
from token_ledger.testing.contract.windows import WindowsContract  # noqa: E402

__all__ = [
    "START",
    "AccountsContract",
    "BadInputContract",
    "ContractBase",
    "CreditsContract",
    "DeductContract",
    "EntitlementsContract",
    "HistoryContract",
    "HostileInputContract",
    "LedgerFactory",
    "MonitoringContract",
    "NotificationsContract",
    "OrganisationsContract",
    "RepositoryContract",
    "RepositoryFactory",
    "RepositoryPortContract",
    "ResetsContract",
    "ReturnedValuesContract",
    "UnitOfWorkContract",
    "UsageContract",
    "WindowsContract",
]


class RepositoryContract(
    UnitOfWorkContract,
    RepositoryPortContract,
    AccountsContract,
    DeductContract,
    CreditsContract,
    EntitlementsContract,
    ResetsContract,
    OrganisationsContract,
    WindowsContract,
    HistoryContract,
    UsageContract,
    MonitoringContract,
    NotificationsContract,
    ReturnedValuesContract,
    BadInputContract,
    HostileInputContract,
):
    """The whole contract: subclass it and implement ``create_repository(directory)``.

    See :class:`ContractBase` for the hooks and the fixtures.
    """
