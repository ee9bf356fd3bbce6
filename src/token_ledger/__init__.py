"""Monthly token allowances for every user of an application, spent safely.

>>> from token_ledger import TokenLedger
>>> ledger = TokenLedger.memory()
>>> _ = ledger.open_account("u1", monthly_limit=50)
>>> ledger.deduct("u1", 14, feature="literature_search").monthly_remaining
36
"""

from token_ledger.account import Change, TokenAccount
from token_ledger.clock import Clock, system_clock
from token_ledger.errors import (
    AccountExists,
    AccountNotFound,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidAmount,
    InvalidInput,
    NaiveDatetime,
    ReservationClosed,
    ReservationNotFound,
    SchemaVersionError,
    StorageError,
    TokenLedgerError,
    TransactionNotFound,
    TransientStorageError,
    UnknownTimeZone,
)
from token_ledger.grants import Grant, Reservation, ReservationStatus
from token_ledger.ledger import DeductResult, History, Ledger, TokenStatus
from token_ledger.memory import MemoryRepository
from token_ledger.monitoring import Alert, AlertReport, Health
from token_ledger.policy import MonthlyResetPolicy, Period
from token_ledger.reconciliation import Discrepancy
from token_ledger.repository import (
    AccountFilter,
    HistoryQuery,
    StaleCutoffs,
    TokenRepository,
    UnitOfWork,
)
from token_ledger.service import TokenLedger
from token_ledger.sql import install_postgres_sql, install_sqlite_sql
from token_ledger.transactions import Effects, OperationType, Transaction

__version__ = "0.1.0"

__all__ = [
    "AccountExists",
    "AccountFilter",
    "AccountNotFound",
    "Alert",
    "AlertReport",
    "Change",
    "Clock",
    "DeductResult",
    "Discrepancy",
    "Effects",
    "Grant",
    "Health",
    "History",
    "HistoryQuery",
    "IdempotencyConflict",
    "InsufficientTokens",
    "InvalidAmount",
    "InvalidInput",
    "Ledger",
    "MemoryRepository",
    "MonthlyResetPolicy",
    "NaiveDatetime",
    "OperationType",
    "Period",
    "Reservation",
    "ReservationClosed",
    "ReservationNotFound",
    "ReservationStatus",
    "SchemaVersionError",
    "StaleCutoffs",
    "StorageError",
    "TokenAccount",
    "TokenLedger",
    "TokenLedgerError",
    "TokenRepository",
    "TokenStatus",
    "Transaction",
    "TransactionNotFound",
    "TransientStorageError",
    "UnitOfWork",
    "UnknownTimeZone",
    "install_postgres_sql",
    "install_sqlite_sql",
    "system_clock",
]
