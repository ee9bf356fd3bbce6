"""Every SQL query of the seed system's "Token System Maintenance Guide", verbatim.

This is the one copy: the tests import the queries from here. Each is copied
character for character from the guide's code blocks, placeholders included
(``'uuid'``, ``'user-uuid-here'``: the prepared ledgers have accounts with
those ids). A query that appears twice in the guide is here once.

:data:`WALKTHROUGH` is the guide followed on a prepared ledger with the
optional SQL installed, each query with the answer it must give there;
``tests/sql/test_seed_guide.py`` runs it. The ledger, at the database's own
clock: three accounts last written 70 days ago ("uuid" with 36 of 50 used,
"user-uuid-here" 10 of 50, "forgotten" 20 of 50), and "heavy", opened this
month, with 95 of 100 used and one refused deduction.

:data:`ORGANISATION_WALKTHROUGH` is the same guide on a ledger with an
organisation: "acme" (100 a month) with "uuid" (36 of its own 50 used) and
"user-uuid-here" (10 of 50) as members 70 days ago, so acme spent 46 then, and
"forgotten" on its own (20 of 50); this month "heavy" (95 of its 100) and "ivy"
(3 of 50) spend as members, which resets acme and leaves it 98 of 100 used,
and each has one refused deduction: heavy's by its own budget, ivy's by acme's
(``refused_by``). Every row holds its own account's monthly allowance, and the
guide's counts take the organisation as one account among the others: a
member's spending is in its own row and in acme's, but a refusal is one failed
entry, the member's.
"""

from __future__ import annotations

from typing import Any

import attrs

# 1. Verify Reset System is Working
HEALTH_CHECK = """SELECT
  COUNT(*) as total_users,
  COUNT(*) FILTER (WHERE last_monthly_reset >= DATE_TRUNC('month', CURRENT_DATE)) as current,
  COUNT(*) FILTER (WHERE last_monthly_reset < DATE_TRUNC('month', CURRENT_DATE)) as stale
FROM user_tokens;"""

# 2. Manually Trigger Reset (Emergency), and the Monthly Checklist
RESET_ALL = "SELECT auto_reset_monthly_tokens();"
RESET_ONE_EMERGENCY = "SELECT reset_user_tokens_if_needed('user-uuid-here');"

# 3. Check Token Transaction History
RECENT_RESETS = """SELECT user_id, created_at, operation_context
FROM token_transactions
WHERE operation_type = 'reset'
  AND created_at >= NOW() - INTERVAL '7 days'
ORDER BY created_at DESC;"""

# 4. Verify Triggers Are Active
TRIGGERS = """SELECT trigger_name, event_manipulation, action_timing
FROM information_schema.triggers
WHERE event_object_table = 'user_tokens';"""

# Troubleshooting: "Tokens not resetting for user", steps 1 to 4
USER_STATUS = "SELECT * FROM user_tokens WHERE user_id = 'uuid';"
VIEW_STATUS = "SELECT * FROM user_tokens_with_auto_reset WHERE user_id = 'uuid';"
RESET_ONE = "SELECT reset_user_tokens_if_needed('uuid');"
LAST_RESET = """SELECT * FROM token_transactions
WHERE user_id = 'uuid' AND operation_type = 'reset'
ORDER BY created_at DESC LIMIT 1;"""

# Troubleshooting: "Incorrect token count"
TABLE_VS_VIEW = """SELECT
  t.monthly_tokens_used as table_value,
  v.monthly_tokens_used as view_value,
  t.last_monthly_reset,
  DATE_TRUNC('month', CURRENT_DATE) as current_month
FROM user_tokens t
JOIN user_tokens_with_auto_reset v ON t.user_id = v.user_id
WHERE t.user_id = 'uuid';"""

# Troubleshooting: "Database triggers not firing"
ALL_TRIGGER_COLUMNS = """SELECT * FROM information_schema.triggers
WHERE event_object_table = 'user_tokens';"""

# Monitoring Alerts
STALE_ALERT = """SELECT COUNT(*) FROM user_tokens
WHERE last_monthly_reset < DATE_TRUNC('month', CURRENT_DATE) - INTERVAL '1 day';"""
FAILED_ALERT = """SELECT COUNT(*) FROM token_transactions
WHERE success = false
  AND created_at >= NOW() - INTERVAL '1 hour';"""
HIGH_USAGE_ALERT = """SELECT COUNT(*) FROM user_tokens
WHERE monthly_tokens_used::float / monthly_limit > 0.9;"""

SKIPPED = {
    r"\dS user_tokens  -- In psql": (
        "a psql meta-command, not SQL: psql itself turns it into catalog queries, so no"
        " other client can send it; the information_schema query next to it in the guide"
        " checks the same triggers and runs here"
    ),
}


class Placeholder(str):
    """A value known only when the walkthrough runs, such as the current month's start."""


ANY = Placeholder("any value")
CURRENT_MONTH = Placeholder("the start of the current month, UTC")
OLD_MONTH = Placeholder("the start of the month 70 days ago, UTC")
CURRENT_MONTH_ISO = Placeholder("CURRENT_MONTH as operation_context writes it")
OLD_MONTH_ISO = Placeholder("OLD_MONTH as operation_context writes it")


def reset_context(previous_used: int) -> dict[str, Any]:
    return {
        "previous_used": previous_used,
        "previous_period_start": OLD_MONTH_ISO,
        "period_start": CURRENT_MONTH_ISO,
    }


@attrs.frozen
class Step:
    """A query of the guide and the rows it must return at this point of the walkthrough."""

    guide: str
    query: str
    rows: list[tuple[Any, ...]]


TRIGGER_ROWS = [
    ("auto_monthly_reset_trigger_insert", "INSERT", "BEFORE"),
    ("auto_monthly_reset_trigger_update", "UPDATE", "BEFORE"),
]

# Every column of information_schema.triggers for the two triggers.
TRIGGER_COLUMN_ROWS = [
    (
        *(ANY, "public", name, event, ANY, "public", "user_tokens", 1, None),
        *("EXECUTE FUNCTION check_and_reset_monthly_tokens()", "ROW", timing),
        *(None, None, None, None, ANY),
    )
    for name, event, timing in TRIGGER_ROWS
]
# The reset of "uuid"'s 36, every column of its entry: no member_entry_id, a member's too.
UUID_RESET_ROWS = [
    (
        *(ANY, "uuid", "reset", 36, None, reset_context(36), True, ANY, None, 50),
        *({"usage": -36}, None, None),
    )
]

WALKTHROUGH = [
    # Stale rows are normal until their next write: nothing has run on the 1st yet.
    Step("1. health check, before the month's reset", HEALTH_CHECK, [(4, 1, 3)]),
    Step("4. expected: 2 triggers (INSERT + UPDATE)", TRIGGERS, TRIGGER_ROWS),
    Step(
        "triggers not firing: the same two, every column", ALL_TRIGGER_COLUMNS, TRIGGER_COLUMN_ROWS
    ),
    Step("alert 1: stale resets, alert if > 0", STALE_ALERT, [(3,)]),
    Step("alert 2: failed transactions, alert if > 10", FAILED_ALERT, [(1,)]),
    Step("alert 3: users near their limit", HIGH_USAGE_ALERT, [(1,)]),
    # Tokens not resetting for user: the table still holds last period's usage...
    Step(
        "troubleshooting 1: check user status",
        USER_STATUS,
        [("uuid", 50, 36, OLD_MONTH, None, ANY, ANY, 0, 0, 0, None, 0, None, None, None)],
    ),
    # ...which the view already shows reset.
    Step(
        "troubleshooting 2: what the view returns",
        VIEW_STATUS,
        [("uuid", 50, 0, CURRENT_MONTH, None, ANY, ANY, 0, 0, 0, None, 0, None, None, None)],
    ),
    # "If view shows 0 but table shows > 0, and last_monthly_reset < current_month"
    Step(
        "incorrect token count: table vs view",
        TABLE_VS_VIEW,
        [(36, 0, OLD_MONTH, CURRENT_MONTH)],
    ),
    Step("troubleshooting 3: manually reset", RESET_ONE, [(True,)]),
    Step("troubleshooting 4: verify reset", LAST_RESET, UUID_RESET_ROWS),
    Step("emergency: reset a single user", RESET_ONE_EMERGENCY, [(True,)]),
    # Monthly checklist: reset_count counts the accounts still in the month that
    # ended; at 00:01 on the 1st that is every account used before ("should match
    # total active users"), here the one no one has written or reset since.
    Step("monthly checklist: execute the bulk reset", RESET_ALL, [(1,)]),
    Step("1. health check: expected stale = 0", HEALTH_CHECK, [(4, 4, 0)]),
    Step(
        "3. recent resets, newest first",
        RECENT_RESETS,
        [
            ("forgotten", ANY, reset_context(20)),
            ("user-uuid-here", ANY, reset_context(10)),
            ("uuid", ANY, reset_context(36)),
        ],
    ),
    Step("alert 1 after the reset", STALE_ALERT, [(0,)]),
    Step("emergency: reset ALL users who need it, again", RESET_ALL, [(0,)]),
]

ORGANISATION_WALKTHROUGH = [
    # Six accounts, the organisation one of them; acme and this month's members are current.
    Step("1. health check, before the month's reset", HEALTH_CHECK, [(6, 3, 3)]),
    Step("4. expected: 2 triggers (INSERT + UPDATE)", TRIGGERS, TRIGGER_ROWS),
    Step(
        "triggers not firing: the same two, every column", ALL_TRIGGER_COLUMNS, TRIGGER_COLUMN_ROWS
    ),
    Step("alert 1: stale resets, alert if > 0", STALE_ALERT, [(3,)]),
    # heavy's refusal and ivy's (by acme): one failed entry each, none on acme.
    Step("alert 2: failed transactions, alert if > 10", FAILED_ALERT, [(2,)]),
    # heavy at 95 of its own 100, acme at 98 of its 100; ivy's 3 of 50 is not near.
    Step("alert 3: users near their limit", HIGH_USAGE_ALERT, [(2,)]),
    # A member's row holds its own allowance and usage: 36 of 50, not acme's 46.
    Step(
        "troubleshooting 1: check user status",
        USER_STATUS,
        [("uuid", 50, 36, OLD_MONTH, None, ANY, ANY, 0, 0, 0, None, 0, None, "acme", None)],
    ),
    Step(
        "troubleshooting 2: what the view returns",
        VIEW_STATUS,
        [("uuid", 50, 0, CURRENT_MONTH, None, ANY, ANY, 0, 0, 0, None, 0, None, "acme", None)],
    ),
    Step(
        "incorrect token count: table vs view",
        TABLE_VS_VIEW,
        [(36, 0, OLD_MONTH, CURRENT_MONTH)],
    ),
    # The member's reset alone: acme was reset this month already, by heavy's spending.
    Step("troubleshooting 3: manually reset", RESET_ONE, [(True,)]),
    Step("troubleshooting 4: verify reset", LAST_RESET, UUID_RESET_ROWS),
    Step("emergency: reset a single user", RESET_ONE_EMERGENCY, [(True,)]),
    Step("monthly checklist: execute the bulk reset", RESET_ALL, [(1,)]),
    Step("1. health check: expected stale = 0", HEALTH_CHECK, [(6, 6, 0)]),
    # Each budget's own reset: acme's when heavy first spent from it this month.
    Step(
        "3. recent resets, newest first",
        RECENT_RESETS,
        [
            ("forgotten", ANY, reset_context(20)),
            ("user-uuid-here", ANY, reset_context(10)),
            ("uuid", ANY, reset_context(36)),
            ("acme", ANY, reset_context(46)),
        ],
    ),
    Step("alert 1 after the reset", STALE_ALERT, [(0,)]),
    Step("emergency: reset ALL users who need it, again", RESET_ALL, [(0,)]),
]
