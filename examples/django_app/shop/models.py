from __future__ import annotations

from django.db import models


class Order(models.Model):
    user_id = models.CharField(max_length=255)
    item = models.CharField(max_length=255)
    tokens = models.PositiveIntegerField()
    ledger_entry_id = models.BigIntegerField(null=True)

    class Meta:
        app_label = "shop"
