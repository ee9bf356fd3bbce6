"""Monthly token allowances for every user of an application, spent safely.

>>> from token_ledger import TokenLedger
>>> ledger = TokenLedger.memory()
>>> _ = ledger.open_account("u1", monthly_limit=50)
>>> ledger.deduct("u1", 14, feature="literature_search").monthly_remaining
36
"""

from typing import TYPE_CHECKING

from token_ledger.account import TokenAccount
from token_ledger.application import TokenLedger
from token_ledger.clock import Clock, system_clock
from token_ledger.errors import (
    AccountExists,
    AccountNotFound,
    GrantNotFound,
    GrantVoided,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    LedgerInvariantError,
    NaiveDatetime,
    ReservationClosed,
    ReservationNotFound,
    ReservationsHeld,
    SchemaVersionError,
    StorageError,
    TokenLedgerError,
    TransactionNotFound,
    TransientStorageError,
    UnknownTimeZone,
)
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.monitoring import Alert, AlertReport, AlertThresholds, Health
from token_ledger.policy import MonthlyResetPolicy, Period
from token_ledger.reconciliation import Discrepancy
from token_ledger.results import DeductResult, History, TokenStatus, WindowStatus
from token_ledger.sql import install_postgres_sql, install_sqlite_sql
from token_ledger.thresholds import Notification, Threshold
from token_ledger.transactions import OperationType, Transaction
from token_ledger.windows import SpendingWindow

if TYPE_CHECKING:  # imported on first use at run time: see __getattr__ below
    from token_ledger.asyncio_application import AsyncTokenLedger

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``token_ledger.AsyncTokenLedger``, imported on first use: ``import token_ledger`` stays
    free of asyncio and of every database driver."""
    if name == "AsyncTokenLedger":
        from token_ledger.asyncio_application import AsyncTokenLedger

        return AsyncTokenLedger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What an application calls and gets back. What a storage adapter implements lives with the
# port in token_ledger.repository (TokenRepository, UnitOfWork, HistoryQuery, AccountFilter).
__all__ = [
    "AccountExists",
    "AccountNotFound",
    "Alert",
    "AlertReport",
    "AlertThresholds",
    "AsyncTokenLedger",
    "Clock",
    "DeductResult",
    "Discrepancy",
    "Grant",
    "GrantNotFound",
    "GrantVoided",
    "Health",
    "History",
    "IdempotencyConflict",
    "InsufficientTokens",
    "InvalidAmount",
    "InvalidInput",
    "LedgerInvariantError",
    "MonthlyResetPolicy",
    "NaiveDatetime",
    "Notification",
    "OperationType",
    "Period",
    "Reservation",
    "ReservationClosed",
    "ReservationNotFound",
    "ReservationStatus",
    "ReservationsHeld",
    "SchemaVersionError",
    "SpendingWindow",
    "StorageError",
    "Threshold",
    "TokenAccount",
    "TokenLedger",
    "TokenLedgerError",
    "TokenStatus",
    "Transaction",
    "TransactionNotFound",
    "TransientStorageError",
    "UnknownTimeZone",
    "WindowStatus",
    "install_postgres_sql",
    "install_sqlite_sql",
    "system_clock",
]
