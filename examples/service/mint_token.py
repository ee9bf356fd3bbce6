"""Print a bearer token for a user of the example service.

    TOKEN_LEDGER_SIGNING_SECRET=... python examples/service/mint_token.py alice

The service accepts it in ``Authorization: Bearer <token>`` as long as it runs
with the same secret. Tokens come from your identity provider in a real service.
"""

from __future__ import annotations

import os
import sys

from app import sign_user_token


def main(argv: list[str]) -> int:
    secret = os.environ.get("TOKEN_LEDGER_SIGNING_SECRET")
    if len(argv) != 2 or not secret:
        print("usage: TOKEN_LEDGER_SIGNING_SECRET=... mint_token.py USER_ID", file=sys.stderr)
        return 2
    print(sign_user_token(argv[1], secret))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
