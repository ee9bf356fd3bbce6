"""Checks shared by the concurrency tests of threshold notifications on every engine."""

from __future__ import annotations

from token_ledger import OperationType, Threshold, TokenLedger

DEFAULTS = (Threshold(80), Threshold(100), Threshold.nothing_left())
DEFAULT_KEYS = ",".join(t.key for t in DEFAULTS)


def assert_each_crossing_recorded_once(ledger: TokenLedger, limits: dict[str, int]) -> int:
    """Replaying each account's deductions in id order, every threshold in effect is crossed
    by exactly one entry, and exactly that entry's notification is stored; the ids rise.

    Usage only grows here (one period, no refunds), so each threshold fires once at most.
    """
    notes = ledger.notifications(limit=10_000)
    ids = [note.id for note in notes]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    recorded = {(n.user_id, n.threshold.key): n for n in notes}
    assert len(recorded) == len(notes), "a threshold fired twice"
    for user_id, limit in limits.items():
        own = ledger.get_account(user_id).thresholds
        thresholds = DEFAULTS if own is None else own
        entries = ledger.history(user_id, operation_type=OperationType.DEDUCT, limit=10_000)
        used = 0
        crossing: dict[str, int] = {}
        for entry in reversed(entries):
            if not entry.success:
                continue
            before, used = used, used + entry.amount
            for threshold in thresholds:
                if threshold.percent is None:
                    reached_before, reached_after = before >= limit, used >= limit
                else:
                    reached_before = before * 100 >= threshold.percent * limit
                    reached_after = used * 100 >= threshold.percent * limit
                if reached_after and not reached_before:
                    assert entry.id is not None
                    crossing[threshold.key] = entry.id
        stored = {key: n.transaction_id for (user, key), n in recorded.items() if user == user_id}
        assert stored == crossing, user_id
    return len(notes)
