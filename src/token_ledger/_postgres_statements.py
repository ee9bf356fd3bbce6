"""The PostgreSQL engine's SQL: every statement, composed once per schema, and its rows.

Pure text and values, no I/O: :mod:`token_ledger.postgres` and
:mod:`token_ledger.postgres_async` send the same statements with the same
parameters, one awaiting them, and read their rows back the same way. Identifiers
are quoted by ``psycopg.sql``; values are always bound as parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from psycopg import sql
from psycopg.types.json import Jsonb

from token_ledger._postgres_rows import WRITE
from token_ledger._rows import (
    ACCOUNT_COLUMNS,
    GRANT_COLUMNS,
    HELD_RESERVATIONS,
    LIVE_GRANTS,
    NEW_NOTIFICATION_COLUMNS,
    NEW_TRANSACTION_COLUMNS,
    NOTIFICATION_COLUMNS,
    RESERVATION_COLUMNS,
    TRANSACTION_COLUMNS,
    threshold_guard,
)
from token_ledger._usage_sql import postgres_statement
from token_ledger.operations import DirectDeduction
from token_ledger.organisations import MAX_DEPTH
from token_ledger.repository import UsageQuery
from token_ledger.sql import NOTIFICATION_LOCK_KEY
from token_ledger.thresholds import Threshold


class Statements:
    """Every statement of the adapter, composed once for one schema."""

    def __init__(self, schema: str) -> None:
        names = {
            "user_tokens": sql.Identifier(schema, "user_tokens"),
            "token_transactions": sql.Identifier(schema, "token_transactions"),
            "token_grants": sql.Identifier(schema, "token_grants"),
            "token_reservations": sql.Identifier(schema, "token_reservations"),
            "accounts": sql.SQL(ACCOUNT_COLUMNS),
            "entries": sql.SQL(TRANSACTION_COLUMNS),
            "new_entries": sql.SQL(NEW_TRANSACTION_COLUMNS),
            "grants": sql.SQL(GRANT_COLUMNS),
            "reservations": sql.SQL(RESERVATION_COLUMNS),
            "token_notifications": sql.Identifier(schema, "token_notifications"),
            "token_notification_cursors": sql.Identifier(schema, "token_notification_cursors"),
            "notifications": sql.SQL(NOTIFICATION_COLUMNS),
            "new_notifications": sql.SQL(NEW_NOTIFICATION_COLUMNS),
        }

        def compose(text: str) -> sql.Composed:
            return sql.SQL(text).format(**names)

        self.select_account = compose("SELECT {accounts} FROM {user_tokens} WHERE user_id = %s")
        self.lock_account = compose(
            "SELECT {accounts} FROM {user_tokens} WHERE user_id = %s FOR UPDATE"
        )
        # Read after the accounts' rows, in the same transaction. Under the row locks
        # of a unit of work they are current, since every writer of a user's grants
        # and holds locks the user's row first; a read without locks may see a write
        # committed between the two statements, as any unlocked read may be stale.
        self.balances = {
            query: sql.SQL(query).format(among=sql.SQL("user_id = ANY(%s::text[])"), **names)
            for query in (LIVE_GRANTS, HELD_RESERVATIONS)
        }
        self.insert_account = compose(
            "INSERT INTO {user_tokens} ({accounts})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (user_id) DO NOTHING"
        )
        # Usage may grow up to the limit plus the overage limit. Above that (a limit
        # lowered below what was used) it may stay or fall, but only within the
        # stored period: a new period starts from zero. No CHECK can say this, so
        # it is checked against the row as locked: a write that would overspend
        # changes nothing and the unit of work is refused. A difference rather than
        # a sum, because two bigint limits can add up past bigint.
        self.save_accounts = compose(
            "UPDATE {user_tokens} AS t SET monthly_limit = v.monthly_limit,"
            " monthly_tokens_used = v.monthly_tokens_used,"
            " last_monthly_reset = v.last_monthly_reset, reset_anchor = v.reset_anchor,"
            " updated_at = v.updated_at, overage_limit = v.overage_limit,"
            " grant_balance = v.grant_balance, reserved_tokens = v.reserved_tokens,"
            " time_zone = v.time_zone, rollover_cap = v.rollover_cap,"
            " notification_thresholds = v.notification_thresholds,"
            " organisation_id = v.organisation_id, spending_windows = v.spending_windows"
            " FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::timestamptz[],"
            " %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::bigint[],"
            " %s::bigint[], %s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[],"
            " %s::text[])"
            " AS v({accounts})"
            " WHERE t.user_id = v.user_id"
            " AND (v.monthly_tokens_used - v.monthly_limit <= v.overage_limit"
            " OR (v.monthly_tokens_used <= t.monthly_tokens_used"
            " AND (v.last_monthly_reset = t.last_monthly_reset"
            " OR v.time_zone IS DISTINCT FROM t.time_zone)))"
        )
        # The same for the one account of an ordinary write: plain parameters are
        # far cheaper for the client to send than one-element arrays.
        self.save_account = compose(
            "UPDATE {user_tokens} SET monthly_limit = %(monthly_limit)s,"
            " monthly_tokens_used = %(monthly_tokens_used)s,"
            " last_monthly_reset = %(last_monthly_reset)s, reset_anchor = %(reset_anchor)s,"
            " updated_at = %(updated_at)s, overage_limit = %(overage_limit)s,"
            " grant_balance = %(grant_balance)s, reserved_tokens = %(reserved_tokens)s,"
            " time_zone = %(time_zone)s, rollover_cap = %(rollover_cap)s,"
            " notification_thresholds = %(notification_thresholds)s,"
            " organisation_id = %(organisation_id)s, spending_windows = %(spending_windows)s"
            " WHERE user_id = %(user_id)s"
            " AND (%(monthly_tokens_used)s::bigint - %(monthly_limit)s::bigint"
            " <= %(overage_limit)s::bigint"
            " OR (%(monthly_tokens_used)s::bigint <= monthly_tokens_used"
            " AND (%(last_monthly_reset)s::timestamptz = last_monthly_reset"
            " OR %(time_zone)s::text IS DISTINCT FROM time_zone)))"
        )
        self.save_grants = compose(
            "INSERT INTO {token_grants} ({grants})"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[],"
            " %s::timestamptz[], %s::timestamptz[], %s::text[], %s::integer[],"
            " %s::timestamptz[])"
            " ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining,"
            " voided_at = excluded.voided_at"
        )
        self.save_reservations = compose(
            "INSERT INTO {token_reservations} ({reservations})"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[],"
            " %s::timestamptz[], %s::text[], %s::text[])"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status"
        )
        self.append_transactions = compose(
            "INSERT INTO {token_transactions} ({new_entries}) SELECT {new_entries}"
            " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[],"
            " %s::bigint[], %s::boolean[], %s::text[], %s::jsonb[], %s::text[], %s::jsonb[],"
            " %s::text[], %s::bigint[]) WITH ORDINALITY AS e({new_entries}, position)"
            " ORDER BY position RETURNING id"
        )
        self.append_transaction = compose(
            "INSERT INTO {token_transactions} ({new_entries})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
        )
        self.find_by_idempotency_key = compose(
            "SELECT {entries} FROM {token_transactions} WHERE idempotency_key = %s"
        )
        self.find_transaction = compose("SELECT {entries} FROM {token_transactions} WHERE id = %s")
        self.entries_referencing = compose(
            "SELECT {entries} FROM {token_transactions} WHERE reference = %s ORDER BY id"
        )
        # Answered from idx_token_transactions_reset (migration 6): resets only.
        self.reset_after = compose(
            "SELECT EXISTS (SELECT FROM {token_transactions} WHERE user_id = %s"
            " AND operation_type = 'reset' AND id > %s)"
        )
        self.entries_mirroring = compose(
            "SELECT {entries} FROM {token_transactions} WHERE member_entry_id = %s ORDER BY id"
        )
        self.lock_path = sql.SQL(LOCK_PATH.strip()).format(
            max_depth=sql.Literal(MAX_DEPTH), **names
        )
        self.members_of = compose("SELECT user_id FROM {user_tokens} WHERE organisation_id = %s")
        self.find_reservation = compose(
            "SELECT {reservations} FROM {token_reservations} WHERE id = %s"
        )
        self.find_grant = compose("SELECT {grants} FROM {token_grants} WHERE id = %s")
        self.count_accounts = compose("SELECT count(*) FROM {user_tokens}")
        # Notifications. A transaction that records one first takes this lock, until it
        # commits: so ids (from the identity's sequence, handed out in lock order) become
        # visible in their order, and a reader that sees id n never misses a smaller one
        # that commits later. Only writes that record a notification take it.
        self.notification_lock = sql.SQL("SELECT pg_advisory_xact_lock({})").format(
            sql.Literal(NOTIFICATION_LOCK_KEY)
        )
        self.append_notification = compose(
            "INSERT INTO {token_notifications} ({new_notifications}, occurrence)"
            " SELECT %(user_id)s, %(threshold)s, %(period_start)s, %(created_at)s,"
            " %(transaction_id)s, %(monthly_used)s, %(monthly_limit)s, %(total_remaining)s,"
            " 1 + (SELECT count(*) FROM {token_notifications} WHERE user_id = %(user_id)s"
            " AND threshold = %(threshold)s AND period_start = %(period_start)s)"
            " RETURNING id, occurrence"
        )
        self.last_notification_id = compose(
            "SELECT coalesce(max(id), 0) FROM {token_notifications}"
        )
        self.advance_cursor = compose(
            "INSERT INTO {token_notification_cursors} AS c (consumer, position)"
            " VALUES (%s, %s) ON CONFLICT (consumer) DO UPDATE"
            " SET position = greatest(c.position, excluded.position), updated_at = now()"
            " RETURNING position"
        )
        self.notifications_after = compose(
            "SELECT {notifications} FROM {token_notifications} WHERE id > %s ORDER BY id LIMIT %s"
        )
        self.cursor_position = compose(
            "SELECT position FROM {token_notification_cursors} WHERE consumer = %s"
        )
        self._names = names
        self._direct_by_thresholds: dict[tuple[Threshold, ...], DirectStatements] = {}
        plain = self.direct(())
        self.direct_deduction = plain.direct_deduction
        self.direct_keyed_deduction = plain.direct_keyed_deduction
        self.hinted_direct_deduction = plain.hinted_direct_deduction
        self.hinted_direct_keyed_deduction = plain.hinted_direct_keyed_deduction
        self.discrepancies = {
            one_user: sql.SQL(DISCREPANCIES.strip()).format(
                of_user=sql.SQL(" AND user_id = %(user_id)s" if one_user else ""),
                of_user_a=sql.SQL(" AND a.user_id = %(user_id)s" if one_user else ""),
                of_account=sql.SQL("WHERE a.user_id = %(user_id)s" if one_user else ""),
                **names,
            )
            for one_user in (False, True)
        }
        self._names = names
        self.one_account = sql.SQL(ONE_ACCOUNT.strip()).format(**names)
        self.rendered = Rendered(self)

    def direct(self, thresholds: tuple[Threshold, ...]) -> DirectStatements:
        """The one-statement deductions for a ledger with these default thresholds: their
        guard matches no row where the deduction would cross one (so its notification is
        recorded by the full path)."""
        found = self._direct_by_thresholds.get(thresholds)
        if found is None:
            if len(self._direct_by_thresholds) >= 64:
                self._direct_by_thresholds.clear()
            found = DirectStatements(*_direct_deductions(self._names, thresholds))
            self._direct_by_thresholds[thresholds] = found
        return found

    def _where(self, conditions: Sequence[sql.Composable]) -> sql.Composable:
        return sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")

    def select_accounts(self, conditions: Sequence[sql.Composable]) -> sql.Composed:
        """Accounts by ``user_id``, up to ``LIMIT %s``."""
        return sql.SQL(
            "SELECT {accounts} FROM {user_tokens} WHERE {where} ORDER BY user_id LIMIT %s"
        ).format(where=self._where(conditions), **self._names)

    def lock_batch(self, conditions: Sequence[sql.Composable]) -> sql.Composed:
        """:data:`LOCK_BATCH` for the candidates ``conditions`` select, up to ``LIMIT %s``."""
        return sql.SQL(LOCK_BATCH.strip()).format(
            where=self._where(conditions),
            limit=sql.SQL("%s"),
            max_depth=sql.Literal(MAX_DEPTH),
            **self._names,
        )

    def usage_query(self, query: UsageQuery) -> tuple[sql.Composed, list[Any]]:
        """The grouped query of a usage report (:mod:`token_ledger._usage_sql`), its values."""
        statement, params = postgres_statement(query, WRITE)
        return sql.SQL(statement).format(**self._names), params

    def history_query(self, conditions: Sequence[sql.Composable]) -> sql.Composed:
        return sql.SQL(
            "SELECT {entries} FROM {token_transactions} WHERE {where} ORDER BY id DESC LIMIT %s"
        ).format(where=self._where(conditions), **self._names)

    def count_query(self, conditions: Sequence[sql.Composable]) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {token_transactions} WHERE {where}").format(
            where=self._where(conditions), **self._names
        )

    def accounts_with_balances(self, conditions: Sequence[sql.Composable]) -> sql.Composed:
        """:data:`WITH_BALANCES` for the accounts ``conditions`` select, by ``user_id``,
        up to ``LIMIT %s``."""
        return sql.SQL(WITH_BALANCES.strip() + " ORDER BY t.user_id LIMIT %s").format(
            where=self._where(conditions), **self._names
        )

    def calendar_run(self, conditions: Sequence[sql.Composable]) -> sql.Composed:
        """:data:`CALENDAR_RUN` for the candidates ``conditions`` select."""
        return sql.SQL(CALENDAR_RUN.strip()).format(
            where=self._where(conditions),
            limit=sql.SQL("%(limit)s"),
            max_depth=sql.Literal(MAX_DEPTH),
            **self._names,
        )

    def count_where(self, filters: Sequence[Sequence[sql.Composable]]) -> sql.Composed:
        """The accounts matching each list of conditions, counted in one pass."""
        counts = [
            sql.SQL("count(*) FILTER (WHERE {})").format(self._where(conditions))
            if conditions
            else sql.SQL("count(*)")
            for conditions in filters
        ]
        return sql.SQL("SELECT {} FROM {user_tokens}").format(
            sql.SQL(", ").join(counts), **self._names
        )


def _direct_deductions(
    names: Mapping[str, sql.Composable], thresholds: tuple[Threshold, ...] = ()
) -> tuple[sql.Composed, ...]:
    """The one-statement deduction, sent ``earlier`` and computing it (hinted), each without
    and with an idempotency key, then the member's deduction (hinted) without and with a
    key: what :class:`DirectStatements` holds, in its order. Each guard also holds only
    where the deduction crosses none of ``thresholds`` (the ledger's defaults) and the
    account has none of its own (:func:`~token_ledger._rows.threshold_guard`)."""

    def deductible(place: str, unused: str) -> str:
        """Where the domain's deduction is the common one (see DirectDeduction), for an
        account whose place in the tree of organisations is ``place``. Subtracting never
        overflows: 0 <= usage and 0 < limit."""
        return (
            "reset_anchor IS NULL AND time_zone IS NULL"
            " AND last_monthly_reset = %(period_start)s"
            " AND grant_balance = 0 AND reserved_tokens = 0"
            f" AND {place} AND spending_windows IS NULL"
            f" AND %(amount)s <= monthly_limit - monthly_tokens_used{unused}{{noted}}"
        )

    # The usage grows by the amount, with the stamp the domain gives updated_at.
    spend = (
        "UPDATE {user_tokens}"
        " SET monthly_tokens_used = monthly_tokens_used + %(amount)s,"
        " updated_at = CASE WHEN updated_at = %(now)s THEN {earlier} ELSE %(now)s END"
    )
    # The common deduction (see DirectDeduction) in one statement: the usage grows
    # only where the domain would let it grow this way, and the entry is written from
    # the row the UPDATE returns.
    direct = (
        "WITH updated AS ("
        + spend
        + " WHERE user_id = %(user_id)s AND "
        + deductible("organisation_id IS NULL", "{unused}")
        + " RETURNING user_id, monthly_limit - monthly_tokens_used AS balance_after,"
        " overage_limit)"
    )
    entry = (
        "INSERT INTO {token_transactions} ({new_entries})"
        " SELECT user_id, 'deduct', %(amount)s, %(now)s, balance_after, true, %(feature)s,"
        " %(context)s, {key}, jsonb_build_object('usage', %(amount)s), NULL, NULL FROM updated"
    )
    # The id, balance_after and overage_limit of the entry written, or no row.
    returning = " RETURNING id, balance_after, (SELECT overage_limit FROM updated)"
    # The same, and when the guard matched nothing a row of NULLs that says whether
    # the account has an anchor, a zone, an organisation or windows, which no deduction
    # of this kind covers (the adapter remembers it, and goes to the full path for that
    # user at once: each is set rarely, and a user wrongly remembered only loses the
    # shortcut), but for a member, which the adapter sends the member's deduction.
    hinted = (
        ", inserted AS (" + entry + " RETURNING id, balance_after)"
        " SELECT id, balance_after, (SELECT overage_limit FROM updated), false FROM inserted"
        " UNION ALL SELECT NULL, NULL, NULL, reset_anchor IS NOT NULL OR time_zone IS NOT NULL"
        " OR organisation_id IS NOT NULL OR spending_windows IS NOT NULL"
        " FROM {user_tokens}"
        " WHERE user_id = %(user_id)s AND NOT EXISTS (SELECT FROM updated)"
    )
    # What no deduction of a member covers however the figures change: an anchor, a zone
    # or windows of either account, or an organisation that is a member too.
    never = "reset_anchor IS NOT NULL OR time_zone IS NOT NULL OR spending_windows IS NOT NULL"
    # A member whose organisation is a root, in one statement. The organisation's row is
    # locked before the member's, the order every writer of a path takes (LOCK_PATH), so it
    # cannot deadlock with one: the member's row is locked only once its test of the
    # organisation ran. Both are judged as locked (at READ COMMITTED a lock that waited
    # sees the row as its writer committed it), so both are written, each with its entry
    # (the member's first: the share names its id), or neither. The row: the member's entry
    # id, balance_after and overage_limit, the share's balance_after and the organisation's
    # overage_limit, false; or, when a guard matched nothing, NULLs and whether either
    # account is one no deduction of a member covers; no row when the account is not a
    # member (any more).
    member = (
        "WITH organisation AS MATERIALIZED (SELECT user_id, "
        + deductible("organisation_id IS NULL", "")
        + " AS deductible, organisation_id IS NOT NULL OR "
        + never
        + " AS never"
        " FROM {user_tokens} WHERE user_id ="
        " (SELECT organisation_id FROM {user_tokens} WHERE user_id = %(user_id)s) FOR UPDATE),"
        " member AS MATERIALIZED (SELECT user_id, "
        + deductible("organisation_id IS NOT NULL", "{unused}")
        + " AS deductible, "
        + never
        + " AS never FROM {user_tokens}"
        " WHERE user_id = %(user_id)s AND organisation_id = (SELECT user_id FROM organisation)"
        " FOR UPDATE),"
        " charged AS (SELECT organisation.user_id AS organisation_id, member.user_id"
        " FROM organisation, member WHERE organisation.deductible AND member.deductible),"
        " shared AS (" + spend + " WHERE user_id = (SELECT organisation_id FROM charged)"
        " RETURNING user_id, monthly_limit - monthly_tokens_used AS balance_after,"
        " overage_limit),"
        " updated AS (" + spend + " WHERE user_id = (SELECT user_id FROM charged)"
        " RETURNING user_id, monthly_limit - monthly_tokens_used AS balance_after,"
        " overage_limit),"
        " inserted AS (" + entry + " RETURNING id, balance_after),"
        " share AS (INSERT INTO {token_transactions} ({new_entries})"
        " SELECT shared.user_id, 'deduct', %(amount)s, %(now)s, shared.balance_after, true,"
        " %(feature)s, %(share_context)s, NULL, jsonb_build_object('usage', %(amount)s), NULL,"
        " inserted.id FROM shared, inserted)"
        " SELECT inserted.id, inserted.balance_after, updated.overage_limit,"
        " shared.balance_after, shared.overage_limit, false FROM inserted, updated, shared"
        " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, organisation.never OR member.never"
        " FROM organisation, member WHERE NOT EXISTS (SELECT FROM inserted)"
    )
    given = {"earlier": sql.SQL("%(earlier)s")}
    # The hinted ones compute it: one instant fewer to send.
    computed = {"earlier": sql.SQL("%(now)s - interval '1 microsecond'")}
    unkeyed = {"unused": sql.SQL(""), "key": sql.SQL("NULL")}
    # With a key: not when an entry holds it already (the full path replays that
    # entry); a concurrent writer of the same key makes the INSERT fail instead.
    keyed = {
        "unused": sql.SQL(
            " AND NOT EXISTS (SELECT FROM {token_transactions} WHERE idempotency_key = %(key)s)"
        ).format(**names),
        "key": sql.SQL("%(key)s"),
    }
    noted = {"noted": sql.SQL(" AND " + threshold_guard(thresholds, "%(amount)s"))}
    given = {**given, **noted}
    computed = {**computed, **noted}
    plain = sql.SQL(direct + " " + entry + returning).format(**given, **unkeyed, **names)
    plain_keyed = sql.SQL(direct + " " + entry + returning).format(**given, **keyed, **names)
    hinted_plain = sql.SQL(direct + hinted).format(**computed, **unkeyed, **names)
    hinted_keyed = sql.SQL(direct + hinted).format(**computed, **keyed, **names)
    member_plain = sql.SQL(member).format(**computed, **unkeyed, **names)
    member_keyed = sql.SQL(member).format(**computed, **keyed, **names)
    return plain, plain_keyed, hinted_plain, hinted_keyed, member_plain, member_keyed


# Accounts as a read without locks sees them: each row with its live grants and held
# reservations, in the one snapshot of one statement, as arrays (one of each column,
# oldest first), and only when the row says it has some, as the locking read loads them.
# The locking read keeps its two steps: at READ COMMITTED, a lock that waited for
# another writer sees that writer's row, but its statement's snapshot would not see
# that writer's grants.
WITH_BALANCES = """
SELECT t.user_id, t.monthly_limit, t.monthly_tokens_used, t.last_monthly_reset, t.created_at,
    t.updated_at, t.reset_anchor, t.overage_limit, t.grant_balance, t.reserved_tokens,
    t.time_zone, t.rollover_cap, t.notification_thresholds, t.organisation_id,
    t.spending_windows, g.grant_ids, g.grant_amounts, g.grant_remaining, g.grant_created_at,
    g.grant_expires_at, g.grant_reasons, g.grant_priorities, h.hold_ids, h.hold_amounts,
    h.hold_created_at, h.hold_expires_at, h.hold_statuses, h.hold_features
FROM {user_tokens} AS t
LEFT JOIN LATERAL (
    SELECT array_agg(id ORDER BY created_at, id) AS grant_ids,
        array_agg(amount ORDER BY created_at, id) AS grant_amounts,
        array_agg(remaining ORDER BY created_at, id) AS grant_remaining,
        array_agg(created_at ORDER BY created_at, id) AS grant_created_at,
        array_agg(expires_at ORDER BY created_at, id) AS grant_expires_at,
        array_agg(reason ORDER BY created_at, id) AS grant_reasons,
        array_agg(priority ORDER BY created_at, id) AS grant_priorities
    FROM {token_grants} WHERE user_id = t.user_id AND remaining > 0 AND t.grant_balance > 0
) AS g ON true
LEFT JOIN LATERAL (
    SELECT array_agg(id ORDER BY created_at, id) AS hold_ids,
        array_agg(amount ORDER BY created_at, id) AS hold_amounts,
        array_agg(created_at ORDER BY created_at, id) AS hold_created_at,
        array_agg(expires_at ORDER BY created_at, id) AS hold_expires_at,
        array_agg(status ORDER BY created_at, id) AS hold_statuses,
        array_agg(feature ORDER BY created_at, id) AS hold_features
    FROM {token_reservations}
    WHERE user_id = t.user_id AND status = 'held' AND t.reserved_tokens > 0
) AS h ON true
WHERE {where}
"""


# One account with its live grants and held reservations, in one statement: the account
# row, then the grants, then the holds, each oldest first, in one set of columns (the last
# two are the grants' and holds' own texts).
ONE_ACCOUNT = """
WITH a AS (SELECT {accounts} FROM {user_tokens} WHERE user_id = %(user_id)s)
SELECT 0 AS kind, a.*, NULL::text, NULL::text FROM a
UNION ALL SELECT 1, g.id, g.amount, g.remaining, g.created_at, g.expires_at, NULL, NULL,
    g.priority, NULL, NULL, NULL, NULL, NULL, NULL, NULL, g.reason, NULL
    FROM a JOIN {token_grants} AS g ON g.user_id = a.user_id AND g.remaining > 0
    WHERE a.grant_balance > 0
UNION ALL SELECT 2, h.id, h.amount, NULL, h.created_at, h.expires_at, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, h.status, h.feature
    FROM a JOIN {token_reservations} AS h ON h.user_id = a.user_id AND h.status = 'held'
    WHERE a.reserved_tokens > 0
ORDER BY 1, 5, 2
"""

# The account and the organisations above it, root first, each locked in that order: the
# order every writer of a path takes, so two of them queue at the root and never deadlock.
# The walk up ``organisation_id`` stops at MAX_DEPTH accounts, so a cycle written by hand
# cannot make it loop. The rows are locked after they are sorted (LockRows sits above the
# Sort: "ORDER BY is applied first", says the manual on the locking clause), one at a time
# in that order. At READ COMMITTED a lock that waited returns the row as the writer left it
# (EvalPlanQual), while the walk itself read the rows as the statement's snapshot had them:
# the domain checks that the links still hold (organisations.check_path), and a path that
# changed in between is a race the unit of work runs again.
LOCK_PATH = """
WITH RECURSIVE path (member, above, depth) AS (
    SELECT user_id, organisation_id, 1 FROM {user_tokens} WHERE user_id = %s
    UNION ALL
    SELECT t.user_id, t.organisation_id, p.depth + 1
    FROM path AS p JOIN {user_tokens} AS t ON t.user_id = p.above
    WHERE p.depth < {max_depth}
)
SELECT {accounts} FROM path JOIN {user_tokens} AS a ON a.user_id = path.member
ORDER BY path.depth DESC FOR UPDATE OF a
"""


# Where the stored balances differ from what the successful entries' effects add up
# to: reconciliation.discrepancies, for every account at once, in its order (accounts
# by user_id, then usage, reserved, holds, grant balance, and grants by id as Python
# sorts them, which is by code point: COLLATE "C"). Like the accounts the library reads,
# grants count only when the row has a grant balance, and held reservations only when it
# has reserved tokens. Sums are numeric, which no log can overflow.
DISCREPANCIES = """
WITH sums AS MATERIALIZED (
    SELECT user_id, sum((effects -> 'usage')::numeric) AS usage,
        sum((effects -> 'reserved')::numeric) AS reserved,
        bool_or(effects ? 'grants') AS granted
    FROM {token_transactions} WHERE success{of_user} GROUP BY user_id
),
expected AS MATERIALIZED (
    SELECT e.user_id, g.key AS grant_id, sum(g.value::numeric) AS amount
    FROM sums AS s JOIN {token_transactions} AS e ON e.user_id = s.user_id,
        jsonb_each(e.effects -> 'grants') AS g
    WHERE s.granted AND e.success AND e.effects ? 'grants'
    GROUP BY e.user_id, g.key HAVING sum(g.value::numeric) <> 0
),
stored AS MATERIALIZED (
    SELECT g.user_id, g.id AS grant_id, g.remaining::numeric AS amount
    FROM {token_grants} AS g JOIN {user_tokens} AS a ON a.user_id = g.user_id
    WHERE g.remaining > 0 AND a.grant_balance > 0{of_user_a}
),
grants AS MATERIALIZED (
    SELECT coalesce(s.user_id, x.user_id) AS user_id, coalesce(s.grant_id, x.grant_id) AS grant_id,
        coalesce(s.amount, 0) AS stored, coalesce(x.amount, 0) AS expected
    FROM stored AS s FULL JOIN expected AS x
        ON x.user_id = s.user_id AND x.grant_id = s.grant_id
),
by_account AS MATERIALIZED (
    SELECT user_id, sum(expected) AS expected, bool_or(stored <> expected) AS differ
    FROM grants GROUP BY user_id
),
holds AS MATERIALIZED (
    SELECT h.user_id, sum(h.amount)::numeric AS amount
    FROM {token_reservations} AS h JOIN {user_tokens} AS a ON a.user_id = h.user_id
    WHERE h.status = 'held' AND a.reserved_tokens > 0{of_user_a} GROUP BY h.user_id
),
differing AS MATERIALIZED (
    SELECT * FROM (
        SELECT a.user_id, a.monthly_tokens_used::numeric AS used,
            coalesce(s.usage, 0) AS e_used, a.reserved_tokens::numeric AS reserved,
            coalesce(s.reserved, 0) AS e_reserved, coalesce(h.amount, 0) AS held,
            a.grant_balance::numeric AS balance, coalesce(b.expected, 0) AS e_balance,
            coalesce(b.differ, false) AS grants_differ
        FROM {user_tokens} AS a LEFT JOIN sums AS s ON s.user_id = a.user_id
            LEFT JOIN holds AS h ON h.user_id = a.user_id
            LEFT JOIN by_account AS b ON b.user_id = a.user_id
        {of_account}
    ) AS figures
    WHERE used <> e_used OR reserved <> e_reserved OR held <> e_reserved
        OR balance <> e_balance OR grants_differ
)
SELECT user_id, field, stored, expected FROM (
    SELECT user_id, 0 AS place, '' AS grant_id, 'monthly_tokens_used' AS field,
        used AS stored, e_used AS expected FROM differing WHERE used <> e_used
    UNION ALL SELECT user_id, 1, '', 'reserved_tokens', reserved, e_reserved
        FROM differing WHERE reserved <> e_reserved
    UNION ALL SELECT user_id, 2, '', 'holds', held, e_reserved
        FROM differing WHERE held <> e_reserved
    UNION ALL SELECT user_id, 3, '', 'grant_balance', balance, e_balance
        FROM differing WHERE balance <> e_balance
    UNION ALL SELECT g.user_id, 4, g.grant_id, 'grant:' || g.grant_id, g.stored, g.expected
        FROM grants AS g JOIN differing AS d ON d.user_id = g.user_id
        WHERE g.stored <> g.expected
) AS found ORDER BY user_id, place, grant_id COLLATE "C"
"""

# The bulk reset's batch: the next candidates by user_id, as the statement's snapshot has
# them (``batch``), each with its depth in the tree of organisations as the snapshot has it
# (``depths``: 0 for a root; the walk up stops at MAX_DEPTH, as LOCK_PATH's does).
BATCH = """ batch AS MATERIALIZED (
    SELECT user_id, organisation_id FROM {user_tokens} WHERE {where}
    ORDER BY user_id LIMIT {limit}
),
above (member, organisation_id, depth) AS (
    SELECT user_id, organisation_id, 0 FROM batch
    UNION ALL
    SELECT above.member, t.organisation_id, above.depth + 1
    FROM above JOIN {user_tokens} AS t ON t.user_id = above.organisation_id
    WHERE above.depth < {max_depth}
),
depths AS (SELECT member, max(depth) AS depth FROM above GROUP BY member)
"""

# The bulk reset's next batch, locked root first: organisations before their members (by
# depth, then user_id), the order in which writers lock a path as the tree stands
# (LOCK_PATH), so a reset of a member and its organisation in one batch cannot deadlock
# with a member's deduction, nor with another bulk reset. Locked in ``user_id`` order, as
# it used to be, a member that sorts before its organisation was locked first. A refund of
# what a member spent before it left, and a move into an organisation, lock an
# organisation before an account that is not below it: PostgreSQL breaks the rare
# deadlock of those with a batch, and the unit of work that lost runs again. Each row
# comes back as it is once locked, whether a writer reset it meanwhile or not (the domain
# decides), by user_id: the last one is where the next batch starts, and only the last
# batch comes back short.
LOCK_BATCH = (
    "WITH RECURSIVE"
    + BATCH
    + """,
locked AS MATERIALIZED (
    SELECT {accounts} FROM {user_tokens} AS a JOIN depths ON depths.member = a.user_id
    ORDER BY depths.depth, a.user_id FOR UPDATE OF a
)
SELECT {accounts} FROM locked ORDER BY user_id
"""
)

# The bulk reset's next run of accounts that need no decision of the domain (see
# CalendarResets), in one statement: the batch is locked as LOCK_BATCH locks it, and the
# candidates are those still stale once locked; those before the first with an anchor, a
# zone, a rollover, a grant, a hold or windows (the domain's reset starts them again too)
# are reset, each with the entry the domain writes. It answers how many accounts the batch
# chose and the last of them, how many candidates there were, how many it reset, the last
# of those, and how many after them the domain must decide.
CALENDAR_RUN = (
    "WITH RECURSIVE"
    + BATCH
    + """,
candidates AS MATERIALIZED (
    SELECT a.user_id, monthly_limit, monthly_tokens_used, last_monthly_reset,
        reset_anchor IS NULL AND time_zone IS NULL AND rollover_cap = 0
            AND grant_balance = 0 AND reserved_tokens = 0
            AND spending_windows IS NULL AS simple
    FROM {user_tokens} AS a JOIN depths ON depths.member = a.user_id WHERE {where}
    ORDER BY depths.depth, a.user_id FOR UPDATE OF a
),
stop AS MATERIALIZED (SELECT min(user_id) AS user_id FROM candidates WHERE NOT simple),
run AS MATERIALIZED (
    SELECT c.* FROM candidates AS c, stop WHERE stop.user_id IS NULL OR c.user_id < stop.user_id
),
reset AS (
    UPDATE {user_tokens} AS t SET monthly_tokens_used = 0,
        last_monthly_reset = %(period_start)s,
        updated_at = CASE WHEN t.updated_at = %(now)s THEN %(earlier)s ELSE %(now)s END
    FROM run WHERE t.user_id = run.user_id
),
logged AS (
    INSERT INTO {token_transactions} ({new_entries})
    SELECT user_id, 'reset', monthly_tokens_used, %(now)s, monthly_limit, true, NULL,
        jsonb_build_object('previous_used', monthly_tokens_used, 'previous_period_start',
            to_char(last_monthly_reset AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'period_start', %(period_start_text)s::text),
        NULL,
        CASE WHEN monthly_tokens_used = 0 THEN '{{}}'::jsonb
            ELSE jsonb_build_object('usage', -monthly_tokens_used) END,
        NULL, NULL
    FROM run ORDER BY user_id
)
SELECT (SELECT count(*) FROM batch), (SELECT max(user_id) FROM batch),
    (SELECT count(*) FROM candidates), (SELECT count(*) FROM run),
    (SELECT max(user_id) FROM run),
    (SELECT count(*) FROM candidates AS c WHERE c.user_id >= stop.user_id
        AND NOT EXISTS (SELECT FROM candidates AS s
            WHERE s.simple AND s.user_id > stop.user_id AND s.user_id < c.user_id))
FROM stop
"""
)


@attrs.frozen
class DirectStatements:
    """The six forms of the one-statement deduction (see :func:`direct_deduction`)."""

    direct_deduction: sql.Composed
    direct_keyed_deduction: sql.Composed
    hinted_direct_deduction: sql.Composed
    hinted_direct_keyed_deduction: sql.Composed
    member_deduction: sql.Composed
    member_keyed_deduction: sql.Composed

    def rendered(self) -> RenderedDirect:
        return RenderedDirect(*(form.as_bytes() for form in attrs.astuple(self, recurse=False)))


@attrs.frozen
class RenderedDirect:
    direct_deduction: bytes
    direct_keyed_deduction: bytes
    hinted_direct_deduction: bytes
    hinted_direct_keyed_deduction: bytes
    member_deduction: bytes
    member_keyed_deduction: bytes


class Rendered:
    """The statements of a :class:`Statements` that run most often, rendered to bytes once:
    psycopg would otherwise render a composed statement again on every execution."""

    def __init__(self, statements: Statements) -> None:
        self.direct_deduction = statements.direct_deduction.as_bytes()
        self.direct_keyed_deduction = statements.direct_keyed_deduction.as_bytes()
        self.hinted_direct_deduction = statements.hinted_direct_deduction.as_bytes()
        self.hinted_direct_keyed_deduction = statements.hinted_direct_keyed_deduction.as_bytes()
        self.discrepancies = {
            one_user: query.as_bytes() for one_user, query in statements.discrepancies.items()
        }
        self.select_account = statements.select_account.as_bytes()
        self.one_account = statements.one_account.as_bytes()
        self.count_accounts = statements.count_accounts.as_bytes()
        composed = [value for value in vars(statements).values() if isinstance(value, sql.Composed)]
        composed += statements.balances.values()
        self._by_id = {id(query): query.as_bytes() for query in composed}
        self._statements = statements
        self._direct: tuple[object, RenderedDirect] = ((), statements.direct(()).rendered())

    def direct(self, thresholds: tuple[Threshold, ...]) -> RenderedDirect:
        """The deductions for ``thresholds``, rendered; the last asked for is kept: a
        ledger asks with the same tuple every time."""
        last, rendered = self._direct
        if thresholds is not last:
            rendered = self._statements.direct(thresholds).rendered()
            self._direct = (thresholds, rendered)
        return rendered

    def of(self, query: sql.Composed) -> bytes:
        """``query`` as bytes: rendered once if it is one of the statements', else now."""
        rendered = self._by_id.get(id(query))
        return query.as_bytes() if rendered is None else rendered


def direct_deduction(
    statements: Statements, deduction: DirectDeduction, *, hinted: bool, member: bool = False
) -> tuple[bytes, dict[str, Any]]:
    """The one-statement deduction's statement (keyed or not) and its parameters.

    ``hinted``: the statement that, when its guard matches nothing, answers whether the
    account has an anchor, a zone, windows or an organisation (the synchronous engine
    remembers those, and sends a member the member's deduction), and computes the instant
    before ``now`` itself; otherwise that instant is sent. ``member``: the member's
    deduction, which is hinted too.
    """
    params: dict[str, Any] = {
        "amount": deduction.amount,
        "now": deduction.now,
        "user_id": deduction.user_id,
        "period_start": deduction.period_start,
        "feature": deduction.feature,
        "context": Jsonb(deduction.context),
    }
    rendered = statements.rendered.direct(deduction.thresholds)
    key = deduction.idempotency_key
    if key is not None:
        params["key"] = key
    if member:
        params["share_context"] = Jsonb(deduction.share_context)
        statement = rendered.member_deduction if key is None else rendered.member_keyed_deduction
        return statement, params
    if not hinted:
        params["earlier"] = deduction.earlier
        statement = rendered.direct_deduction if key is None else rendered.direct_keyed_deduction
        return statement, params
    if key is None:
        return rendered.hinted_direct_deduction, params
    return rendered.hinted_direct_keyed_deduction, params
