"""A Django project in one file, placing orders paid for in tokens.

    pip install -e ".[postgres]" "django>=4.2"
    python examples/django_app/run.py                                  # SQLite: shop.db, here
    python examples/django_app/run.py "postgresql://app:secret@localhost/app"

The argument is a token-ledger database URL (``TOKEN_LEDGER_DATABASE_URL``), and
Django's ``DATABASES`` is made from it, so both use the same database. The
code that matters is ``shop/orders.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import django
import psycopg
from django.conf import settings

from token_ledger.database_url import parse_database_url

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shop app


def database_settings(url: str) -> dict[str, Any]:
    parsed = parse_database_url(url)
    if parsed.engine == "sqlite":
        sqlite: dict[str, Any] = {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.target}
        if django.VERSION >= (5, 1):
            # Every atomic() block takes SQLite's write lock at BEGIN: one that read first
            # could not become the writer while another connection writes.
            sqlite["OPTIONS"] = {"transaction_mode": "IMMEDIATE"}
        return sqlite
    parts = psycopg.conninfo.conninfo_to_dict(parsed.target)  # Django 4.2+ uses psycopg 3
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.get("dbname", ""),
        "USER": parts.get("user", ""),
        "PASSWORD": parts.get("password", ""),
        "HOST": parts.get("host", ""),
        "PORT": parts.get("port", ""),
    }


def main(url: str) -> None:
    settings.configure(
        DATABASES={"default": database_settings(url)},
        INSTALLED_APPS=["shop"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        TOKEN_LEDGER_DATABASE_URL=url,
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from shop.models import Order
    from shop.orders import PaymentFailed, place_order
    from shop.tokens import ledger

    from token_ledger import InsufficientTokens
    from token_ledger.within import TransactionRequired

    call_command("migrate", run_syncdb=True, verbosity=0)  # the shop's table
    ledger().ensure_account("alice", monthly_limit=10)  # the first use creates the ledger's

    order = place_order("alice", "summary", 4)
    print(f"placed order {order.pk} (summary, 4 tokens): ledger entry {order.ledger_entry_id}")
    try:
        place_order("alice", "translation", 20)
    except InsufficientTokens as refused:
        print(f"refused translation: asked for {refused.requested}, {refused.remaining} remaining")
    try:
        place_order("alice", "report", 3, fail_after_charging=True)
    except PaymentFailed as failed:
        print(f"rolled back: {failed}; neither the order nor its charge is stored")
    with transaction.atomic(), ledger().within(connection) as tokens:
        last = tokens.history("alice", limit=1)[0]  # read through Django's own connection
        print(f"last entry, read inside atomic(): {last.amount} tokens, {last.operation_context}")
    try:
        with ledger().within(connection):
            pass
    except TransactionRequired:
        print("outside transaction.atomic(): refused, since Django would commit on its own")

    stored = Order.objects.order_by("pk")
    print("orders:", [(o.item, o.tokens, o.ledger_entry_id) for o in stored])
    print("status:", ledger().status("alice").to_dict())
    print("reconcile:", ledger().reconcile())
    ledger().close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "shop.db")
