"""``python -m token_ledger``: the same command line as the ``token-ledger`` script."""

from token_ledger.cli import main

if __name__ == "__main__":
    main()
