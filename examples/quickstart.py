"""A first look at token-ledger: open an account, spend, and read the status.

Run it with ``python examples/quickstart.py [PATH]``. The ledger lives in a
SQLite file (``tokens.db`` in the current directory unless PATH is given), the
embedded default: run it twice and the second run finds the first run's usage.
"""

from __future__ import annotations

import sys

from token_ledger import InsufficientTokens, TokenLedger


def main(path: str) -> None:
    with TokenLedger.sqlite(path) as ledger:
        ledger.ensure_account("alice", monthly_limit=50)

        result = ledger.deduct(
            "alice",
            36,
            feature="literature_search",
            context={"query": "transformers"},
            idempotency_key="request-1",  # a rerun replays this instead of spending again
        )
        print("deduct:", result.to_dict())

        try:
            ledger.deduct("alice", 20, feature="literature_search")
        except InsufficientTokens as refused:
            print(f"refused: asked for {refused.requested}, {refused.remaining} remaining")

        status = ledger.status("alice")
        print("status:", status.to_dict())
        print("next reset:", status.next_reset.isoformat())
        for entry in ledger.history("alice"):
            outcome = "ok" if entry.success else "refused"
            print(f"  #{entry.id} {entry.operation_type} {entry.amount} {outcome}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tokens.db")
