"""Placing an order: its row and its tokens in one ``transaction.atomic()`` block."""

from __future__ import annotations

from django.db import connection, transaction

from shop.models import Order
from shop.tokens import ledger
from token_ledger.within import retrying


class PaymentFailed(Exception):
    pass


def place_order(
    user_id: str, item: str, tokens: int, *, fail_after_charging: bool = False
) -> Order:
    """Store the order and spend its tokens together; run again from the start if it lost a race.

    ``ledger().within(connection)`` runs the deduction in a savepoint of the
    atomic block's transaction: Django's COMMIT stores both, and an exception
    leaving the block (a refusal, a failed payment) rolls both back.
    """

    def attempt() -> Order:
        with transaction.atomic():
            order = Order.objects.create(user_id=user_id, item=item, tokens=tokens)
            with ledger().within(connection) as spend:
                charged = spend.deduct(
                    user_id,
                    tokens,
                    feature=item,
                    context={"order_id": order.pk},
                    idempotency_key=f"order-{order.pk}",
                )
            order.ledger_entry_id = charged.transaction.id
            order.save(update_fields=["ledger_entry_id"])
            if fail_after_charging:
                raise PaymentFailed(f"the card was declined for order {order.pk}")
        return order

    return retrying(attempt)
