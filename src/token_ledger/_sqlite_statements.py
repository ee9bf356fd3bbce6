"""The SQLite engine's longer statements: the one-statement deduction, the bulk reset's
run and reconciliation's grouped query. Text only; :mod:`token_ledger.sqlite` sends them.
"""

from __future__ import annotations

import functools

from token_ledger._rows import ACCOUNT_FIELDS, NEW_TRANSACTION_COLUMNS, threshold_guard
from token_ledger.thresholds import Threshold


def numbered(where: str, first: int) -> str:
    """``where``'s ``?`` marks numbered from ``first`` on, so they follow ``?1 .. ?first-1``."""
    parts = where.split("?")
    return "".join(
        part + (f"?{first + n}" if n < len(parts) - 1 else "") for n, part in enumerate(parts)
    )


# The common deduction (see DirectDeduction): the usage grows only where the domain would
# let it grow this way, and the entry is written from the row the UPDATE returns. ?1 is
# the amount, ?2 now, ?3 the user, ?4 the period's start. Subtracting never overflows:
# 0 <= usage and 0 < limit. The domain stamps updated_at one microsecond before now when
# it is now already; such a row takes the full path. A key stored already makes the
# entry's INSERT fail on the unique index, and the transaction is rolled back: in the
# write lock nobody else can store it meanwhile, and SQLite reuses the rowid.
DIRECTLY_DEDUCTIBLE = "(reset_anchor IS NULL AND time_zone IS NULL AND spending_windows IS NULL)"
"""An account the one-statement deduction may ever apply to: on the ledger's calendar,
without windows. A member's organisation must be one too, and a root."""
_DIRECT_GUARD = (
    "UPDATE user_tokens SET monthly_tokens_used = monthly_tokens_used + ?1, updated_at = ?2"
    f" WHERE user_id = ?3 AND {DIRECTLY_DEDUCTIBLE}"
    " AND last_monthly_reset = ?4"
    " AND grant_balance = 0 AND reserved_tokens = 0 AND updated_at <> ?2"
    " AND ?1 <= monthly_limit - monthly_tokens_used"
)
_DIRECT_RETURNING = " RETURNING monthly_limit - monthly_tokens_used, overage_limit, organisation_id"
# A member's organisation, ?3, takes its share under the same guard, as the root of the
# path: one whose own organisation_id is set is left to the full path.
_ROOT = " AND organisation_id IS NULL"


@functools.lru_cache(maxsize=64)
def direct_deduction(thresholds: tuple[Threshold, ...]) -> tuple[str, str]:
    """The one-statement deduction for a ledger with these default thresholds, and the
    statement of an organisation's share: each matches no row where the deduction would
    cross one (:func:`~token_ledger._rows.threshold_guard`)."""
    noted = f" AND {threshold_guard(thresholds, '?1')}"
    return (
        f"{_DIRECT_GUARD}{noted}{_DIRECT_RETURNING}",
        f"{_DIRECT_GUARD}{_ROOT}{noted}{_DIRECT_RETURNING}",
    )


DIRECT_DEDUCTION = direct_deduction(())
# Whether an account a guard refused is one the deduction never covers (see KnownFullPath):
# ?1 the account, ?2 whether it is a member's organisation, which must be a root too.
NEVER_DIRECT = (
    f"SELECT NOT {DIRECTLY_DEDUCTIBLE} OR (?2 AND organisation_id IS NOT NULL)"
    " FROM user_tokens WHERE user_id = ?1"
)
# The account's entry, and an organisation's share of a member's: the share has no key
# and names the member's entry (the last parameter, NULL for the account's own).
DIRECT_ENTRY = (
    f"INSERT INTO token_transactions ({NEW_TRANSACTION_COLUMNS})"
    " VALUES (?, 'deduct', ?, ?, ?, 1, ?, ?, ?, ?, NULL, ?)"
)

RESET_AFTER = (
    "SELECT EXISTS (SELECT 1 FROM token_transactions WHERE user_id = ?"
    " AND operation_type = 'reset' AND id > ?)"
)
"""Whether the account has a reset entry after an entry; answered from
``idx_token_transactions_reset`` (migration 0006), which holds the resets alone."""

_PATH_COLUMNS = ", ".join(f"t.{column}" for column in ACCOUNT_FIELDS)
# The account and the organisations above it, root first: the depth walked up is
# bounded (?2), so that a cycle written by hand cannot loop.
PATH = (
    "WITH RECURSIVE path (user_id, depth) AS ("
    " SELECT user_id, 0 FROM user_tokens WHERE user_id = ?1"
    " UNION ALL SELECT u.organisation_id, p.depth + 1 FROM path p"
    " JOIN user_tokens u ON u.user_id = p.user_id"
    " WHERE u.organisation_id IS NOT NULL AND p.depth + 1 < ?2)"
    f" SELECT {_PATH_COLUMNS} FROM path p"
    " JOIN user_tokens t ON t.user_id = p.user_id ORDER BY p.depth DESC"
)


# An account the bulk reset can reset in SQL: no anchor, zone of its own, rollover, grant,
# hold or window, and instants in the library's own form (the entry quotes last_monthly_reset;
# updated_at is compared).
_CANONICAL = "'____-__-__ __:__:__.______+00:00'"
RESET_IN_SQL = (
    "(reset_anchor IS NULL AND time_zone IS NULL AND rollover_cap = 0"
    " AND grant_balance = 0 AND reserved_tokens = 0 AND spending_windows IS NULL"
    f" AND last_monthly_reset LIKE {_CANONICAL} AND updated_at LIKE {_CANONICAL})"
)
# A run of such accounts' reset entries, in user_id order, and their new rows. ?1 is now,
# ?2 the new period's start as the context writes it, ?3 that start as stored, ?4 now less
# a microsecond; the rest are the candidates' conditions and the run's last user_id.
RUN_ENTRIES = (
    f"INSERT INTO token_transactions ({NEW_TRANSACTION_COLUMNS})"
    " SELECT user_id, 'reset', monthly_tokens_used, ?1, monthly_limit, 1, NULL,"
    " json_object('previous_used', monthly_tokens_used, 'previous_period_start',"
    " substr(last_monthly_reset, 1, 10) || 'T' || substr(last_monthly_reset, 12),"
    " 'period_start', ?2), NULL,"
    " CASE WHEN monthly_tokens_used = 0 THEN '{{}}'"
    " ELSE json_object('usage', -monthly_tokens_used) END, NULL, NULL"
    " FROM user_tokens {where} AND user_id <= ? AND " + RESET_IN_SQL + " ORDER BY user_id"
)
RUN_ACCOUNTS = (
    "UPDATE user_tokens SET monthly_tokens_used = 0, last_monthly_reset = ?3,"
    " updated_at = CASE WHEN updated_at = ?1 THEN ?4 ELSE ?1 END"
    " {where} AND user_id <= ? AND " + RESET_IN_SQL
)

# Where the stored balances differ from what the successful entries' effects add up
# to: reconciliation.discrepancies, for every account at once, in its order (accounts
# by user_id, then usage, reserved, holds, grant balance, and grants by id). Like the
# accounts the library reads, grants count only when the row has a grant balance, and
# held reservations only when it has reserved tokens. The {of_...} placeholders restrict
# it to one user, or to none.
DISCREPANCIES = """
WITH sums AS MATERIALIZED (
    SELECT user_id, sum(json_extract(effects, '$.usage')) AS usage,
        sum(json_extract(effects, '$.reserved')) AS reserved,
        max(instr(effects, '"grants"') > 0) AS granted
    FROM token_transactions WHERE success = 1{of_user} GROUP BY user_id
),
expected AS MATERIALIZED (
    SELECT e.user_id, g.key AS grant_id, sum(g.value) AS amount
    FROM sums AS s JOIN token_transactions AS e ON e.user_id = s.user_id,
        json_each(e.effects, '$.grants') AS g
    WHERE s.granted AND e.success = 1 AND instr(e.effects, '"grants"') > 0
    GROUP BY e.user_id, g.key HAVING sum(g.value) <> 0
),
stored AS MATERIALIZED (
    SELECT g.user_id, g.id AS grant_id, g.remaining AS amount
    FROM token_grants AS g JOIN user_tokens AS a ON a.user_id = g.user_id
    WHERE g.remaining > 0 AND a.grant_balance > 0{of_user_a}
),
grants AS MATERIALIZED (
    SELECT i.user_id, i.grant_id, coalesce(s.amount, 0) AS stored,
        coalesce(x.amount, 0) AS expected
    FROM (SELECT user_id, grant_id FROM expected UNION SELECT user_id, grant_id FROM stored) AS i
    LEFT JOIN stored AS s ON s.user_id = i.user_id AND s.grant_id = i.grant_id
    LEFT JOIN expected AS x ON x.user_id = i.user_id AND x.grant_id = i.grant_id
),
by_account AS MATERIALIZED (
    SELECT user_id, sum(expected) AS expected, max(stored <> expected) AS differ
    FROM grants GROUP BY user_id
),
holds AS MATERIALIZED (
    SELECT h.user_id, sum(h.amount) AS amount
    FROM token_reservations AS h JOIN user_tokens AS a ON a.user_id = h.user_id
    WHERE h.status = 'held' AND a.reserved_tokens > 0{of_user_a} GROUP BY h.user_id
),
differing AS MATERIALIZED (
    SELECT * FROM (
        SELECT a.user_id, a.monthly_tokens_used AS used, coalesce(s.usage, 0) AS e_used,
            a.reserved_tokens AS reserved, coalesce(s.reserved, 0) AS e_reserved,
            coalesce(h.amount, 0) AS held, a.grant_balance AS balance,
            coalesce(b.expected, 0) AS e_balance, coalesce(b.differ, 0) AS grants_differ
        FROM user_tokens AS a LEFT JOIN sums AS s ON s.user_id = a.user_id
            LEFT JOIN holds AS h ON h.user_id = a.user_id
            LEFT JOIN by_account AS b ON b.user_id = a.user_id
        {of_account}
    )
    WHERE used <> e_used OR reserved <> e_reserved OR held <> e_reserved
        OR balance <> e_balance OR grants_differ
)
SELECT user_id, 0 AS place, '' AS grant_id, 'monthly_tokens_used', used, e_used
    FROM differing WHERE used <> e_used
UNION ALL SELECT user_id, 1, '', 'reserved_tokens', reserved, e_reserved
    FROM differing WHERE reserved <> e_reserved
UNION ALL SELECT user_id, 2, '', 'holds', held, e_reserved FROM differing WHERE held <> e_reserved
UNION ALL SELECT user_id, 3, '', 'grant_balance', balance, e_balance
    FROM differing WHERE balance <> e_balance
UNION ALL SELECT g.user_id, 4, g.grant_id, 'grant:' || g.grant_id, g.stored, g.expected
    FROM grants AS g JOIN differing AS d ON d.user_id = g.user_id WHERE g.stored <> g.expected
ORDER BY 1, 2, 3
"""


def discrepancies(user_id: str | None) -> tuple[str, tuple[str, ...]]:
    """:data:`DISCREPANCIES` for every account, or for one, and its parameters."""
    if user_id is None:
        return DISCREPANCIES.format(of_user="", of_user_a="", of_account=""), ()
    return DISCREPANCIES.format(
        of_user=" AND user_id = ?",
        of_user_a=" AND a.user_id = ?",
        of_account="WHERE a.user_id = ?",
    ), (user_id,) * 4
