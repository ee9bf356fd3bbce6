-- token-ledger: the optional SQL for SQLite (3.38 or later), in plain SQL that
-- any SQLite client can run: no functions of the application are needed.
--
-- The seed system's view and triggers, keeping their names, for programs
-- that also write to user_tokens without the Python library; the library
-- works with or without them. Months are calendar months in UTC (the
-- library's default MonthlyResetPolicy()); rows with a reset_anchor, a
-- time_zone of their own or a rollover_cap are left to the library: their
-- resets need its calendar or write a grant. Safe to run again, on tables
-- token-ledger has created.
--
-- Organisations and their members are accounts like the others here: each row
-- holds its own budget and resets on its own, with its own reset entry (the
-- library resets a member without touching its organisation, and the other way
-- round). Spending windows (spending_windows) are left as they are stored:
-- the library starts a window again lazily, reading a window that started
-- before the current hour, day or week as nothing used, so a reset written
-- here needs nothing of them. There is no SQL deduction on SQLite: a plain
-- UPDATE of monthly_tokens_used charges no organisation and counts in no
-- window, so spend from members (organisation_id set) and from accounts with
-- windows through the library only.
--
-- Instants are text in the library's form, 2026-01-01 00:00:00.000000+00:00;
-- write them as strftime('%Y-%m-%d %H:%M:%f000+00:00', 'now'). A write's
-- instant is its new updated_at when the write changes it, and the clock of
-- token_ledger_now otherwise.

BEGIN IMMEDIATE;

-- The database clock, as an instant in the library's form: the view and the
-- triggers read "now" from here and nowhere else.
DROP VIEW IF EXISTS token_ledger_now;
CREATE VIEW token_ledger_now (now) AS
    SELECT strftime('%Y-%m-%d %H:%M:%f000+00:00', 'now');

-- Every column of user_tokens as TokenLedger.status sees it now: a calendar
-- month that has ended shows nothing used and this month's start, grants past
-- their expiry are no longer counted, nor holds past theirs. The rows left to
-- the library show their usage and period as stored. organisation_id and
-- spending_windows are shown as stored, the windows' use too (the library
-- reads a window that has ended as nothing used).
DROP VIEW IF EXISTS user_tokens_with_auto_reset;
CREATE VIEW user_tokens_with_auto_reset AS
SELECT
    t.user_id,
    t.monthly_limit,
    CASE WHEN t.reset_anchor IS NULL AND t.time_zone IS NULL AND t.rollover_cap = 0
        AND t.last_monthly_reset < c.period_start THEN 0
        ELSE t.monthly_tokens_used END AS monthly_tokens_used,
    CASE WHEN t.reset_anchor IS NULL AND t.time_zone IS NULL AND t.rollover_cap = 0
        AND t.last_monthly_reset < c.period_start
        THEN c.period_start ELSE t.last_monthly_reset END AS last_monthly_reset,
    t.reset_anchor,
    t.created_at,
    t.updated_at,
    t.overage_limit,
    t.grant_balance - CASE WHEN t.grant_balance = 0 THEN 0 ELSE (
        SELECT coalesce(sum(g.remaining), 0) FROM token_grants AS g
        WHERE g.user_id = t.user_id AND g.remaining > 0 AND g.expires_at <= c.now
    ) END AS grant_balance,
    t.reserved_tokens - CASE WHEN t.reserved_tokens = 0 THEN 0 ELSE (
        SELECT coalesce(sum(h.amount), 0) FROM token_reservations AS h
        WHERE h.user_id = t.user_id AND h.status = 'held' AND h.expires_at <= c.now
    ) END AS reserved_tokens,
    t.time_zone,
    t.rollover_cap,
    t.notification_thresholds,
    t.organisation_id,
    t.spending_windows
FROM user_tokens AS t
CROSS JOIN (
    SELECT now, substr(now, 1, 7) || '-01 00:00:00.000000+00:00' AS period_start
    FROM token_ledger_now
) AS c;

-- What expired is written off the balances, never below 0: a writer's own change of a
-- balance on top of a write-off (a stray UPDATE) cannot break their CHECKs.
-- SQLite leaves the row that a BEFORE trigger changes undefined, so these run
-- AFTER the write: a row written into a month that has ended gets the reset
-- entry TokenLedger writes, then, as TokenLedger settles an account, the
-- grants past their expiry are written off and the holds past theirs released
-- (with their expire and release entries), and the row is moved into the
-- current month by a second UPDATE (which fires no trigger: recursive
-- triggers are off, and the row is current by then anyway).

-- A new row for an ended month starts the current one with nothing used.
DROP TRIGGER IF EXISTS auto_monthly_reset_trigger_insert;
CREATE TRIGGER auto_monthly_reset_trigger_insert
AFTER INSERT ON user_tokens
FOR EACH ROW
WHEN NEW.reset_anchor IS NULL AND NEW.time_zone IS NULL AND NEW.rollover_cap = 0
    AND NEW.last_monthly_reset < substr(NEW.updated_at, 1, 7) || '-01 00:00:00.000000+00:00'
BEGIN
    INSERT INTO token_transactions (user_id, operation_type, amount, created_at, balance_after,
        success, operation_context, effects)
    SELECT NEW.user_id, 'reset', NEW.monthly_tokens_used, w.now, NEW.monthly_limit, 1,
        json_object(
            'previous_used', NEW.monthly_tokens_used,
            'previous_period_start',
                substr(NEW.last_monthly_reset, 1, 10) || 'T' || substr(NEW.last_monthly_reset, 12),
            'period_start', substr(w.period_start, 1, 10) || 'T' || substr(w.period_start, 12)),
        CASE WHEN NEW.monthly_tokens_used = 0 THEN '{}'
            ELSE json_object('usage', -NEW.monthly_tokens_used) END
    FROM (
        SELECT NEW.updated_at AS now,
            substr(NEW.updated_at, 1, 7) || '-01 00:00:00.000000+00:00' AS period_start
    ) AS w;
    INSERT INTO token_transactions (user_id, operation_type, amount, created_at, balance_after,
        success, operation_context, effects, reference)
    SELECT g.user_id, 'expire', g.remaining, NEW.updated_at, NEW.monthly_limit, 1,
        json_object('expires_at', substr(g.expires_at, 1, 10) || 'T' || substr(g.expires_at, 12)),
        json_object('grants', json_object(g.id, -g.remaining)), g.id
    FROM token_grants AS g
    WHERE g.user_id = NEW.user_id AND g.remaining > 0 AND g.expires_at <= NEW.updated_at
    ORDER BY g.created_at, g.id;
    INSERT INTO token_transactions (user_id, operation_type, amount, created_at, balance_after,
        success, feature, operation_context, effects, reference)
    SELECT h.user_id, 'release', h.amount, NEW.updated_at, NEW.monthly_limit, 1, h.feature,
        json_object('reason', 'expired',
            'expires_at', substr(h.expires_at, 1, 10) || 'T' || substr(h.expires_at, 12)),
        json_object('reserved', -h.amount), h.id
    FROM token_reservations AS h
    WHERE h.user_id = NEW.user_id AND h.status = 'held' AND h.expires_at <= NEW.updated_at
    ORDER BY h.created_at, h.id;
    UPDATE user_tokens SET
        monthly_tokens_used = 0,
        last_monthly_reset = substr(NEW.updated_at, 1, 7) || '-01 00:00:00.000000+00:00',
        grant_balance = max(grant_balance - (
            SELECT coalesce(sum(g.remaining), 0) FROM token_grants AS g
            WHERE g.user_id = NEW.user_id AND g.remaining > 0 AND g.expires_at <= NEW.updated_at),
            0),
        reserved_tokens = max(reserved_tokens - (
            SELECT coalesce(sum(h.amount), 0) FROM token_reservations AS h
            WHERE h.user_id = NEW.user_id AND h.status = 'held'
                AND h.expires_at <= NEW.updated_at), 0)
    WHERE user_id = NEW.user_id;
    UPDATE token_grants SET remaining = 0
    WHERE user_id = NEW.user_id AND remaining > 0 AND expires_at <= NEW.updated_at;
    UPDATE token_reservations SET status = 'expired'
    WHERE user_id = NEW.user_id AND status = 'held' AND expires_at <= NEW.updated_at;
END;

-- An update of a row whose month has ended: the reset comes first, and the
-- writer's change of usage is kept on top of it
-- (SET monthly_tokens_used = monthly_tokens_used + 5 on last month's row leaves 5).
-- An update that sets last_monthly_reset itself is the writer's own reset
-- (the library's, or the fix-ups above) and is left as it is, and so is a row
-- that is, before or after the update, one of those left to the library. The
-- write's instant is w.now below, the same in every statement.
DROP TRIGGER IF EXISTS auto_monthly_reset_trigger_update;
CREATE TRIGGER auto_monthly_reset_trigger_update
AFTER UPDATE ON user_tokens
FOR EACH ROW
WHEN NEW.reset_anchor IS NULL AND OLD.reset_anchor IS NULL
    AND NEW.time_zone IS NULL AND OLD.time_zone IS NULL
    AND NEW.rollover_cap = 0 AND OLD.rollover_cap = 0
    AND NEW.last_monthly_reset IS OLD.last_monthly_reset
    AND NEW.last_monthly_reset < substr(
        CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
            ELSE (SELECT now FROM token_ledger_now) END,
        1, 7) || '-01 00:00:00.000000+00:00'
BEGIN
    INSERT INTO token_transactions (user_id, operation_type, amount, created_at, balance_after,
        success, operation_context, effects)
    SELECT NEW.user_id, 'reset', OLD.monthly_tokens_used, w.now, OLD.monthly_limit, 1,
        json_object(
            'previous_used', OLD.monthly_tokens_used,
            'previous_period_start',
                substr(OLD.last_monthly_reset, 1, 10) || 'T' || substr(OLD.last_monthly_reset, 12),
            'period_start', substr(w.period_start, 1, 10) || 'T' || substr(w.period_start, 12)),
        CASE WHEN OLD.monthly_tokens_used = 0 THEN '{}'
            ELSE json_object('usage', -OLD.monthly_tokens_used) END
    FROM (
        SELECT now, substr(now, 1, 7) || '-01 00:00:00.000000+00:00' AS period_start
        FROM (
            SELECT CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
                ELSE (SELECT now FROM token_ledger_now) END AS now
        )
    ) AS w;
    INSERT INTO token_transactions (user_id, operation_type, amount, created_at, balance_after,
        success, operation_context, effects, reference)
    SELECT g.user_id, 'expire', g.remaining, w.now, OLD.monthly_limit, 1,
        json_object('expires_at', substr(g.expires_at, 1, 10) || 'T' || substr(g.expires_at, 12)),
        json_object('grants', json_object(g.id, -g.remaining)), g.id
    FROM token_grants AS g, (
        SELECT CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
            ELSE (SELECT now FROM token_ledger_now) END AS now
    ) AS w
    WHERE g.user_id = NEW.user_id AND g.remaining > 0 AND g.expires_at <= w.now
    ORDER BY g.created_at, g.id;
    INSERT INTO token_transactions (user_id, operation_type, amount, created_at, balance_after,
        success, feature, operation_context, effects, reference)
    SELECT h.user_id, 'release', h.amount, w.now, OLD.monthly_limit, 1, h.feature,
        json_object('reason', 'expired',
            'expires_at', substr(h.expires_at, 1, 10) || 'T' || substr(h.expires_at, 12)),
        json_object('reserved', -h.amount), h.id
    FROM token_reservations AS h, (
        SELECT CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
            ELSE (SELECT now FROM token_ledger_now) END AS now
    ) AS w
    WHERE h.user_id = NEW.user_id AND h.status = 'held' AND h.expires_at <= w.now
    ORDER BY h.created_at, h.id;
    UPDATE user_tokens SET
        monthly_tokens_used = max(NEW.monthly_tokens_used - OLD.monthly_tokens_used, 0),
        last_monthly_reset = w.period_start,
        updated_at = w.now,
        grant_balance = max(grant_balance - (
            SELECT coalesce(sum(g.remaining), 0) FROM token_grants AS g
            WHERE g.user_id = NEW.user_id AND g.remaining > 0 AND g.expires_at <= w.now), 0),
        reserved_tokens = max(reserved_tokens - (
            SELECT coalesce(sum(h.amount), 0) FROM token_reservations AS h
            WHERE h.user_id = NEW.user_id AND h.status = 'held' AND h.expires_at <= w.now), 0)
    FROM (
        SELECT now, substr(now, 1, 7) || '-01 00:00:00.000000+00:00' AS period_start
        FROM (
            SELECT CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
                ELSE (SELECT now FROM token_ledger_now) END AS now
        )
    ) AS w
    WHERE user_id = NEW.user_id;
    UPDATE token_grants SET remaining = 0
    WHERE user_id = NEW.user_id AND remaining > 0 AND expires_at <= (
        SELECT CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
            ELSE (SELECT now FROM token_ledger_now) END);
    UPDATE token_reservations SET status = 'expired'
    WHERE user_id = NEW.user_id AND status = 'held' AND expires_at <= (
        SELECT CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at
            ELSE (SELECT now FROM token_ledger_now) END);
END;

COMMIT;
