"""The application's one ledger, opened on first use (which creates its tables)."""

from __future__ import annotations

import functools

from django.conf import settings

from token_ledger import TokenLedger


@functools.cache
def ledger() -> TokenLedger:
    """The ledger on the database Django uses, named the way ``token-ledger --db`` names it."""
    return TokenLedger.open(settings.TOKEN_LEDGER_DATABASE_URL)
