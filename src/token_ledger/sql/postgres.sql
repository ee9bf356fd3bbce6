-- token-ledger: the optional SQL for PostgreSQL.
--
-- The seed system's view, triggers and functions, keeping its names, for
-- teams that also write to user_tokens from outside Python: the database
-- itself then applies the reset rules. The Python library works with or
-- without it. Generated for months that start at local midnight of the 1st
-- in @timezone_name@, the zone of the ledger's MonthlyResetPolicy, for the
-- accounts without a time_zone of their own (the others count in theirs;
-- accounts with a reset_anchor reset on their own day of the month), with
-- the rollover of a rollover_cap at each reset. Written for
-- PostgreSQL 12 or later, tested on 18. Safe to run again. Run it in one
-- transaction (psql --single-transaction) on tables token-ledger has created.
--
-- Instants: a write's instant is its new updated_at when the write changes
-- it, and the database clock (now()) otherwise. The functions take the
-- instant as p_now, default now(). Entries are the ones TokenLedger writes,
-- with the same operation_context and effects, so reconcile() stays [].
--
-- Organisations and spending windows: every row holds its own budget, members
-- and organisations alike, and each is reset on its own, with its own entry,
-- as the library resets them. Windows (spending_windows) are left as stored:
-- the library starts a window again lazily, reading one that started before
-- the current hour, day or week as nothing used, so a reset needs nothing of
-- them. deduct_tokens spends from an organisation's own budget (its members
-- lock it first, and its own deduction writes only its row, never a share),
-- and refuses, writing nothing, a member (its organisations must be charged
-- too) and an account with windows (each must count the deduction): those
-- are deducted through the library.

SELECT pg_advisory_xact_lock(@migration_lock_key@);  -- the migrations' lock

DO $$
DECLARE
    v_version integer;
BEGIN
    PERFORM now() AT TIME ZONE @timezone@;  -- an unknown time zone fails here
    BEGIN
        SELECT max(version) INTO v_version FROM @schema@.token_ledger_migrations;
    EXCEPTION WHEN undefined_table OR invalid_schema_name THEN
        v_version := NULL;
    END;
    IF v_version IS NULL OR v_version < 5 THEN  -- 5: organisation_id, spending_windows
        RAISE EXCEPTION 'token-ledger''s tables are missing, or older than this SQL'
            USING HINT = 'Open the ledger once with this token-ledger (TokenLedger.postgres or'
                ' token-ledger init) in the same schema, then install the SQL.';
    END IF;
END
$$;

-- The zone whose months the SQL counts.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_timezone() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT @timezone@::text $$;

-- An instant as the library writes it in operation_context:
-- fixed-width UTC text, 2026-01-01T00:00:00.000000+00:00.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_iso(p_instant timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_instant AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00'
$$;

-- The instant of a local wall time, read as Python reads it (fold=0): a time
-- in a gap takes the offset from before the change (as PostgreSQL does too),
-- and a time that occurs twice is the earlier of the two instants (where
-- PostgreSQL takes the later one).
CREATE OR REPLACE FUNCTION @schema@.token_ledger_local_instant(
    p_local timestamp, p_timezone text
) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_later timestamptz := p_local AT TIME ZONE p_timezone;
    v_day_before timestamptz := v_later - interval '1 day';
    v_offset_before interval :=
        (v_day_before AT TIME ZONE p_timezone) - (v_day_before AT TIME ZONE 'UTC');
    v_earlier timestamptz := (p_local - v_offset_before) AT TIME ZONE 'UTC';
BEGIN
    IF v_earlier < v_later AND v_earlier AT TIME ZONE p_timezone = p_local THEN
        RETURN v_earlier;
    END IF;
    RETURN v_later;
END
$$;

-- The start of anniversary period n + p_next, where period n (counted from
-- p_anchor, in p_timezone) is the one that contains p_at. Period n starts at
-- the anchor's local wall time plus n months; like relativedelta, interval
-- arithmetic on a timestamp keeps the day of the month where the month has
-- it and takes the month's last day otherwise (January 31 + 1 month =
-- February 28), always counted from the anchor.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_anniversary(
    p_at timestamptz, p_anchor timestamptz, p_timezone text, p_next integer
) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_local_at timestamp := p_at AT TIME ZONE p_timezone;
    v_local_anchor timestamp := p_anchor AT TIME ZONE p_timezone;
    v_months integer;
BEGIN
    v_months := (extract(year FROM v_local_at) - extract(year FROM v_local_anchor)) * 12
        + extract(month FROM v_local_at) - extract(month FROM v_local_anchor);
    WHILE @schema@.token_ledger_local_instant(
        v_local_anchor + make_interval(months => v_months), p_timezone) > p_at
    LOOP
        v_months := v_months - 1;
    END LOOP;
    WHILE @schema@.token_ledger_local_instant(
        v_local_anchor + make_interval(months => v_months + 1), p_timezone) <= p_at
    LOOP
        v_months := v_months + 1;
    END LOOP;
    RETURN @schema@.token_ledger_local_instant(
        v_local_anchor + make_interval(months => v_months + p_next), p_timezone);
END
$$;

-- MonthlyResetPolicy(timezone=p_timezone).period(p_at, p_anchor).start.
-- Without an anchor, local midnight of the 1st of p_at's month; with one, the
-- start of its anniversary period. Callers pass an account's own zone:
-- coalesce(time_zone, token_ledger_timezone()).
CREATE OR REPLACE FUNCTION @schema@.token_ledger_period_start(
    p_at timestamptz, p_anchor timestamptz, p_timezone text
) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_anchor IS NULL THEN
        RETURN @schema@.token_ledger_local_instant(
            date_trunc('month', p_at AT TIME ZONE p_timezone), p_timezone);
    END IF;
    RETURN @schema@.token_ledger_anniversary(p_at, p_anchor, p_timezone, 0);
END
$$;

-- MonthlyResetPolicy(timezone=p_timezone).period(p_at, p_anchor).end: the
-- next period's start.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_period_end(
    p_at timestamptz, p_anchor timestamptz, p_timezone text
) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_anchor IS NULL THEN
        RETURN @schema@.token_ledger_local_instant(
            date_trunc('month', p_at AT TIME ZONE p_timezone) + interval '1 month', p_timezone);
    END IF;
    RETURN @schema@.token_ledger_anniversary(p_at, p_anchor, p_timezone, 1);
END
$$;

DROP FUNCTION IF EXISTS @schema@.token_ledger_log_reset(
    text, bigint, timestamptz, timestamptz, bigint, timestamptz);  -- before rollover

-- settling.rollover_grant_id: the id of the grant that a reset to the period
-- starting at p_period_start rolls over into, the first 32 hex digits of the
-- SHA-256 of 'rollover <period start as operation_context writes it> <user_id>'.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_rollover_grant_id(
    p_user_id text, p_period_start timestamptz
) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT left(encode(sha256(convert_to(
        'rollover ' || @schema@.token_ledger_iso(p_period_start) || ' ' || p_user_id, 'UTF8')),
        'hex'), 32)
$$;

-- settling.reset's rollover: how much a reset of an account (its limit, usage,
-- rollover_cap, last_monthly_reset, anchor and zone) to the period starting at
-- p_start carries over; 0 for none. What was left of the last ended period's
-- allowance, up to the cap: the stored period's when it ended at p_start, and
-- the whole allowance when whole periods were skipped after it.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_rollover(
    p_limit bigint,
    p_used bigint,
    p_cap bigint,
    p_last_reset timestamptz,
    p_start timestamptz,
    p_anchor timestamptz,
    p_timezone text
) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_cap <= 0 OR p_start <= p_last_reset THEN 0
        WHEN @schema@.token_ledger_period_end(p_last_reset, p_anchor, p_timezone) >= p_start
            THEN least(greatest(p_limit - p_used, 0), p_cap)
        ELSE least(p_limit, p_cap) END
$$;

-- settling.reset of p_account at p_now to the period starting at p_start (a
-- later one than its last_monthly_reset): the reset entry TokenLedger
-- writes, with the rollover grant when something rolls over (written here,
-- expiring when the new period ends). The account comes back reset, for the
-- caller to write.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_reset(
    p_account @schema@.user_tokens, p_start timestamptz, p_now timestamptz
) RETURNS @schema@.user_tokens
LANGUAGE plpgsql AS $$
DECLARE
    v_account @schema@.user_tokens := p_account;
    v_zone text := coalesce(p_account.time_zone, @schema@.token_ledger_timezone());
    v_used bigint := p_account.monthly_tokens_used;
    v_rollover bigint := @schema@.token_ledger_rollover(p_account.monthly_limit, v_used,
        p_account.rollover_cap, p_account.last_monthly_reset, p_start, p_account.reset_anchor,
        v_zone);
    v_grant_id text;
    v_context jsonb := jsonb_build_object(
        'previous_used', v_used,
        'previous_period_start', @schema@.token_ledger_iso(p_account.last_monthly_reset),
        'period_start', @schema@.token_ledger_iso(p_start));
    v_effects jsonb := CASE WHEN v_used = 0 THEN '{}'::jsonb
        ELSE jsonb_build_object('usage', -v_used) END;
BEGIN
    IF v_rollover > 0 THEN
        v_grant_id := @schema@.token_ledger_rollover_grant_id(p_account.user_id, p_start);
        INSERT INTO @schema@.token_grants AS g (id, user_id, amount, remaining, created_at,
            expires_at, reason, priority, voided_at)
        VALUES (v_grant_id, p_account.user_id, v_rollover, v_rollover, p_start,
            @schema@.token_ledger_period_end(p_now, p_account.reset_anchor, v_zone), 'rollover',
            0, NULL)
        ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining,
            voided_at = excluded.voided_at;
        v_context := v_context || jsonb_build_object('rollover', v_rollover);
        v_effects := v_effects
            || jsonb_build_object('grants', jsonb_build_object(v_grant_id, v_rollover));
        v_account.grant_balance := v_account.grant_balance + v_rollover;
    END IF;
    INSERT INTO @schema@.token_transactions (user_id, operation_type, amount, created_at,
        balance_after, success, operation_context, effects)
    VALUES (p_account.user_id, 'reset', v_used, p_now, greatest(p_account.monthly_limit, 0),
        true, v_context, v_effects);
    v_account.monthly_tokens_used := 0;
    v_account.last_monthly_reset := p_start;
    RETURN v_account;
END
$$;

-- Every column of user_tokens as TokenLedger.status sees it at p_now: a
-- period that has ended shows nothing used and the current period's start
-- (each account's own period: its anchor, its zone), with what would roll
-- over counted in grant_balance; grants past their expiry are no longer
-- counted, nor holds past theirs. A plain SQL function, so PostgreSQL
-- inlines it into the query that calls it and a filter on user_id still
-- uses the primary key. Its columns were fewer before time_zone and
-- rollover_cap, and a function's columns cannot be changed in place: an
-- install over such an older one drops it and the view first.
DO $$
DECLARE
    v_namespace oid := (SELECT typnamespace FROM pg_catalog.pg_type
        WHERE oid = pg_typeof(NULL::@schema@.user_tokens));
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = v_namespace AND p.proname = 'user_tokens_with_auto_reset_at'
            AND NOT 'rollover_cap' = ANY (p.proargnames))
    THEN
        DROP VIEW IF EXISTS @schema@.user_tokens_with_auto_reset;
        DROP FUNCTION @schema@.user_tokens_with_auto_reset_at(timestamptz);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION @schema@.user_tokens_with_auto_reset_at(p_now timestamptz)
RETURNS TABLE (
    user_id text,
    monthly_limit bigint,
    monthly_tokens_used bigint,
    last_monthly_reset timestamptz,
    reset_anchor timestamptz,
    created_at timestamptz,
    updated_at timestamptz,
    overage_limit bigint,
    grant_balance bigint,
    reserved_tokens bigint,
    time_zone text,
    rollover_cap bigint
)
LANGUAGE sql STABLE AS $$
    SELECT
        t.user_id,
        t.monthly_limit,
        CASE WHEN p.start > t.last_monthly_reset THEN 0 ELSE t.monthly_tokens_used END,
        greatest(p.start, t.last_monthly_reset),
        t.reset_anchor,
        t.created_at,
        t.updated_at,
        t.overage_limit,
        t.grant_balance - CASE WHEN t.grant_balance = 0 THEN 0 ELSE (
            SELECT coalesce(sum(g.remaining), 0)::bigint FROM @schema@.token_grants AS g
            WHERE g.user_id = t.user_id AND g.remaining > 0 AND g.expires_at <= p_now) END
            + CASE WHEN t.rollover_cap > 0 AND p.start > t.last_monthly_reset
                THEN @schema@.token_ledger_rollover(t.monthly_limit, t.monthly_tokens_used,
                    t.rollover_cap, t.last_monthly_reset, p.start, t.reset_anchor,
                    coalesce(t.time_zone, @schema@.token_ledger_timezone()))
                ELSE 0 END,
        t.reserved_tokens - CASE WHEN t.reserved_tokens = 0 THEN 0 ELSE (
            SELECT coalesce(sum(h.amount), 0)::bigint FROM @schema@.token_reservations AS h
            WHERE h.user_id = t.user_id AND h.status = 'held' AND h.expires_at <= p_now) END,
        t.time_zone,
        t.rollover_cap
    FROM @schema@.user_tokens AS t
    CROSS JOIN LATERAL (
        SELECT CASE WHEN t.reset_anchor IS NULL AND t.time_zone IS NULL
            THEN (SELECT @schema@.token_ledger_period_start(
                p_now, NULL, @schema@.token_ledger_timezone()))
            ELSE @schema@.token_ledger_period_start(
                p_now, t.reset_anchor, coalesce(t.time_zone, @schema@.token_ledger_timezone()))
            END AS start
    ) AS p
$$;

-- notification_thresholds, organisation_id and spending_windows, which no reset changes,
-- come from the row itself: the function keeps the columns it has always returned, so
-- installing again never changes its type. Windows show as stored, their use too (the
-- library reads a window that has ended as nothing used).
CREATE OR REPLACE VIEW @schema@.user_tokens_with_auto_reset AS
    SELECT a.user_id, a.monthly_limit, a.monthly_tokens_used, a.last_monthly_reset,
        a.reset_anchor, a.created_at, a.updated_at, a.overage_limit, a.grant_balance,
        a.reserved_tokens, a.time_zone, a.rollover_cap, t.notification_thresholds,
        t.organisation_id, t.spending_windows
    FROM @schema@.user_tokens_with_auto_reset_at(now()) AS a
    JOIN @schema@.user_tokens AS t ON t.user_id = a.user_id;

-- BEFORE INSERT and BEFORE UPDATE of a user_tokens row: a row written into a
-- period that has ended is reset as it is written, and a reset entry logged.
-- The instant is the write's new updated_at, or now() when the write leaves
-- updated_at as it was. TokenLedger's rows are always current at the instant
-- it stamps, so for its own writes this does nothing. The row is settled as
-- TokenLedger settles an account before it changes it (token_ledger_settle:
-- the stored row's period, in its own zone, with its rollover_cap's rollover
-- grant, then the write-off of grants and holds past their expiry, such as the
-- last period's rollover). For an UPDATE the writer's changes are kept on top
-- of that (SET monthly_tokens_used = monthly_tokens_used + 5 on last month's
-- row leaves 5); an UPDATE that sets last_monthly_reset itself is the writer's
-- own reset and is left as it is. An INSERT without last_monthly_reset starts
-- the current period. A member's row or an organisation's is reset on its own,
-- as the library resets it, and organisation_id and spending_windows are kept
-- as written (windows start again lazily, in the library).
CREATE OR REPLACE FUNCTION @schema@.check_and_reset_monthly_tokens() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(NEW.updated_at, now());
    v_start timestamptz;
    v_before @schema@.user_tokens := NEW;
    v_after @schema@.user_tokens;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.last_monthly_reset IS DISTINCT FROM OLD.last_monthly_reset THEN
            RETURN NEW;
        END IF;
        v_before := OLD;
        IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
            v_now := now();
        END IF;
    END IF;
    v_start := @schema@.token_ledger_period_start(v_now, v_before.reset_anchor,
        coalesce(v_before.time_zone, @schema@.token_ledger_timezone()));
    IF TG_OP = 'INSERT' AND NEW.last_monthly_reset IS NULL THEN
        NEW.last_monthly_reset := v_start;
    END IF;
    IF NEW.last_monthly_reset >= v_start THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- INSERT ... ON CONFLICT runs this before it finds the conflict: an
        -- existing row is left to the UPDATE trigger (or to nothing).
        IF EXISTS (SELECT FROM @schema@.user_tokens AS t WHERE t.user_id = NEW.user_id) THEN
            RETURN NEW;
        END IF;
        v_before := NEW;
    END IF;
    v_after := @schema@.token_ledger_settle(v_before, v_now);
    NEW.monthly_tokens_used := CASE WHEN TG_OP = 'INSERT' THEN 0
        ELSE greatest(NEW.monthly_tokens_used - OLD.monthly_tokens_used, 0) END;
    -- The write-offs on top of the writer's own change, never below 0: a stray UPDATE
    -- of a balance cannot break its CHECK.
    NEW.grant_balance :=
        greatest(NEW.grant_balance + (v_after.grant_balance - v_before.grant_balance), 0);
    NEW.reserved_tokens :=
        greatest(NEW.reserved_tokens + (v_after.reserved_tokens - v_before.reserved_tokens), 0);
    NEW.last_monthly_reset := v_start;
    NEW.updated_at := v_now;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS auto_monthly_reset_trigger_insert ON @schema@.user_tokens;
CREATE TRIGGER auto_monthly_reset_trigger_insert
    BEFORE INSERT ON @schema@.user_tokens
    FOR EACH ROW EXECUTE FUNCTION @schema@.check_and_reset_monthly_tokens();

DROP TRIGGER IF EXISTS auto_monthly_reset_trigger_update ON @schema@.user_tokens;
CREATE TRIGGER auto_monthly_reset_trigger_update
    BEFORE UPDATE ON @schema@.user_tokens
    FOR EACH ROW EXECUTE FUNCTION @schema@.check_and_reset_monthly_tokens();

-- TokenAccount.as_of for one locked row: the reset of an ended period (in the
-- account's own zone, with its rollover), then grants past their expiry
-- written off and holds past theirs released, each with the entry TokenLedger
-- writes, in its order. Grant and hold rows are written here; the account
-- comes back to be written once by the caller.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_settle(
    p_account @schema@.user_tokens, p_now timestamptz
) RETURNS @schema@.user_tokens
LANGUAGE plpgsql AS $$
DECLARE
    v_account @schema@.user_tokens := p_account;
    v_start timestamptz := @schema@.token_ledger_period_start(p_now, p_account.reset_anchor,
        coalesce(p_account.time_zone, @schema@.token_ledger_timezone()));
    v_grant record;
    v_hold record;
BEGIN
    IF v_start > v_account.last_monthly_reset THEN
        v_account := @schema@.token_ledger_reset(v_account, v_start, p_now);
    END IF;
    IF v_account.grant_balance > 0 THEN
        FOR v_grant IN
            SELECT g.id, g.remaining, g.expires_at FROM @schema@.token_grants AS g
            WHERE g.user_id = v_account.user_id AND g.remaining > 0 AND g.expires_at <= p_now
            ORDER BY g.created_at, g.id
        LOOP
            UPDATE @schema@.token_grants SET remaining = 0 WHERE id = v_grant.id;
            v_account.grant_balance := v_account.grant_balance - v_grant.remaining;
            INSERT INTO @schema@.token_transactions (user_id, operation_type, amount,
                created_at, balance_after, success, operation_context, effects, reference)
            VALUES (v_account.user_id, 'expire', v_grant.remaining, p_now,
                greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0), true,
                jsonb_build_object('expires_at', @schema@.token_ledger_iso(v_grant.expires_at)),
                jsonb_build_object('grants', jsonb_build_object(v_grant.id, -v_grant.remaining)),
                v_grant.id);
        END LOOP;
    END IF;
    IF v_account.reserved_tokens > 0 THEN
        FOR v_hold IN
            SELECT h.id, h.amount, h.expires_at, h.feature FROM @schema@.token_reservations AS h
            WHERE h.user_id = v_account.user_id AND h.status = 'held' AND h.expires_at <= p_now
            ORDER BY h.created_at, h.id
        LOOP
            UPDATE @schema@.token_reservations SET status = 'expired' WHERE id = v_hold.id;
            v_account.reserved_tokens := v_account.reserved_tokens - v_hold.amount;
            INSERT INTO @schema@.token_transactions (user_id, operation_type, amount,
                created_at, balance_after, success, feature, operation_context, effects,
                reference)
            VALUES (v_account.user_id, 'release', v_hold.amount, p_now,
                greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0), true,
                v_hold.feature,
                jsonb_build_object('reason', 'expired',
                    'expires_at', @schema@.token_ledger_iso(v_hold.expires_at)),
                jsonb_build_object('reserved', -v_hold.amount), v_hold.id);
        END LOOP;
    END IF;
    RETURN v_account;
END
$$;

-- Write p_account over p_stored (the row as locked) if anything changed,
-- stamped like TokenLedger stamps its writes: p_now, or one microsecond
-- earlier when the stored updated_at is p_now already, so that the write
-- changes updated_at and the update trigger judges it at its own instant.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_save(
    p_stored @schema@.user_tokens, p_account @schema@.user_tokens, p_now timestamptz
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_account IS NOT DISTINCT FROM p_stored THEN
        RETURN;
    END IF;
    UPDATE @schema@.user_tokens SET
        monthly_limit = p_account.monthly_limit,
        monthly_tokens_used = p_account.monthly_tokens_used,
        last_monthly_reset = p_account.last_monthly_reset,
        overage_limit = p_account.overage_limit,
        grant_balance = p_account.grant_balance,
        reserved_tokens = p_account.reserved_tokens,
        updated_at = CASE WHEN p_stored.updated_at = p_now
            THEN p_now - interval '1 microsecond' ELSE p_now END
    WHERE user_id = p_stored.user_id;
END
$$;

CREATE OR REPLACE FUNCTION @schema@.token_ledger_lock_account(p_user_id text)
RETURNS @schema@.user_tokens
LANGUAGE plpgsql AS $$
DECLARE
    v_account @schema@.user_tokens;
BEGIN
    SELECT * INTO v_account FROM @schema@.user_tokens AS t
    WHERE t.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no token account for user %', p_user_id USING ERRCODE = 'P0002';
    END IF;
    RETURN v_account;
END
$$;

-- TokenLedger.reset_if_needed: persists a pending reset of one account (and
-- expired grants and holds, as every write does); true if it reset.
CREATE OR REPLACE FUNCTION @schema@.reset_user_tokens_if_needed(
    p_user_id text, p_now timestamptz DEFAULT now()
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_stored @schema@.user_tokens := @schema@.token_ledger_lock_account(p_user_id);
    v_account @schema@.user_tokens := @schema@.token_ledger_settle(v_stored, p_now);
BEGIN
    PERFORM @schema@.token_ledger_save(v_stored, v_account, p_now);
    RETURN v_account.last_monthly_reset > v_stored.last_monthly_reset;
END
$$;

-- TokenLedger.reset_all_stale in one set-based statement: every account
-- whose period has ended is reset, with its reset entry; returns how many
-- (SELECT auto_reset_monthly_tokens(), or the reset_count column of
-- SELECT * FROM auto_reset_monthly_tokens()). Like the library, it looks at
-- the accounts that can be stale (accounts on the installed calendar before
-- this month's start; those with an anchor or a zone of their own whose
-- period began at least 28 days less 2 hours ago, each then judged by its
-- own calendar), rolls over what their rollover_cap carries, and writes off
-- those accounts' expired grants and holds too.
-- It locks every account it resets until the transaction ends; on a large
-- table, the library's batched reset (token-ledger reset --all) holds fewer.
-- It locks them organisations first, each level of members after the one
-- above it (a member's depth read from its organisation_id links, at most
-- organisations.MAX_DEPTH, 8), then by user_id: the order of a member's writer,
-- which locks its path root first, so the two never deadlock. The entries are
-- written in user_id order, as the library writes them.
CREATE OR REPLACE FUNCTION @schema@.auto_reset_monthly_tokens(
    p_now timestamptz DEFAULT now(), OUT reset_count bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    v_calendar timestamptz := @schema@.token_ledger_period_start(
        p_now, NULL, @schema@.token_ledger_timezone());
    v_anchored timestamptz := p_now - (interval '28 days' - interval '2 hours');
BEGIN
    WITH candidates AS (
        SELECT t.user_id, t.monthly_limit, t.monthly_tokens_used, t.last_monthly_reset,
            t.grant_balance, t.reserved_tokens, t.reset_anchor, t.rollover_cap,
            coalesce(t.time_zone, @schema@.token_ledger_timezone()) AS zone,
            CASE WHEN t.reset_anchor IS NULL AND t.time_zone IS NULL THEN v_calendar
                ELSE @schema@.token_ledger_period_start(p_now, t.reset_anchor,
                    coalesce(t.time_zone, @schema@.token_ledger_timezone()))
                END AS period_start
        FROM @schema@.user_tokens AS t
        WHERE (t.reset_anchor IS NULL AND t.time_zone IS NULL
                AND t.last_monthly_reset < v_calendar)
            OR (NOT (t.reset_anchor IS NULL AND t.time_zone IS NULL)
                AND t.last_monthly_reset <= v_anchored)
        ORDER BY CASE WHEN t.organisation_id IS NULL THEN 0 ELSE (
            WITH RECURSIVE up (above, depth) AS (
                SELECT t.organisation_id, 1
                UNION ALL
                SELECT o.organisation_id, up.depth + 1
                FROM up JOIN @schema@.user_tokens AS o ON o.user_id = up.above
                WHERE o.organisation_id IS NOT NULL AND up.depth < 8
            )
            SELECT max(up.depth) FROM up) END,
            t.user_id
        FOR UPDATE OF t
    ),
    judged AS (
        SELECT c.*, c.period_start > c.last_monthly_reset AS stale,
            CASE WHEN c.period_start > c.last_monthly_reset
                THEN @schema@.token_ledger_rollover(c.monthly_limit, c.monthly_tokens_used,
                    c.rollover_cap, c.last_monthly_reset, c.period_start, c.reset_anchor,
                    c.zone)
                ELSE 0 END AS rollover
        FROM candidates AS c
    ),
    expired_grants AS (
        SELECT g.id, g.user_id, g.remaining, g.expires_at, g.created_at
        FROM @schema@.token_grants AS g JOIN judged AS c ON c.user_id = g.user_id
        WHERE c.grant_balance > 0 AND g.remaining > 0 AND g.expires_at <= p_now
    ),
    expired_holds AS (
        SELECT h.id, h.user_id, h.amount, h.expires_at, h.created_at, h.feature
        FROM @schema@.token_reservations AS h JOIN judged AS c ON c.user_id = h.user_id
        WHERE c.reserved_tokens > 0 AND h.status = 'held' AND h.expires_at <= p_now
    ),
    settled AS (
        SELECT c.*,
            CASE WHEN c.stale THEN 0 ELSE c.monthly_tokens_used END AS used_after,
            (SELECT coalesce(sum(g.remaining), 0) FROM expired_grants AS g
                WHERE g.user_id = c.user_id)::bigint AS written_off,
            (SELECT coalesce(sum(h.amount), 0) FROM expired_holds AS h
                WHERE h.user_id = c.user_id)::bigint AS released,
            CASE WHEN c.rollover > 0
                THEN @schema@.token_ledger_rollover_grant_id(c.user_id, c.period_start)
                END AS rollover_id
        FROM judged AS c
        WHERE c.stale
            OR EXISTS (SELECT FROM expired_grants AS g WHERE g.user_id = c.user_id)
            OR EXISTS (SELECT FROM expired_holds AS h WHERE h.user_id = c.user_id)
    ),
    written_rollovers AS (
        INSERT INTO @schema@.token_grants AS g (id, user_id, amount, remaining, created_at,
            expires_at, reason, priority, voided_at)
        SELECT s.rollover_id, s.user_id, s.rollover, s.rollover, s.period_start,
            @schema@.token_ledger_period_end(p_now, s.reset_anchor, s.zone), 'rollover', 0, NULL
        FROM settled AS s WHERE s.rollover > 0
        ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining,
            voided_at = excluded.voided_at
    ),
    written_grants AS (
        UPDATE @schema@.token_grants AS g SET remaining = 0
        FROM expired_grants AS e WHERE g.id = e.id
    ),
    written_holds AS (
        UPDATE @schema@.token_reservations AS h SET status = 'expired'
        FROM expired_holds AS e WHERE h.id = e.id
    ),
    written_accounts AS (
        UPDATE @schema@.user_tokens AS t SET
            monthly_tokens_used = s.used_after,
            last_monthly_reset = greatest(s.period_start, t.last_monthly_reset),
            grant_balance = t.grant_balance - s.written_off + s.rollover,
            reserved_tokens = t.reserved_tokens - s.released,
            updated_at = CASE WHEN t.updated_at = p_now
                THEN p_now - interval '1 microsecond' ELSE p_now END
        FROM settled AS s WHERE t.user_id = s.user_id
    ),
    entries AS (
        SELECT s.user_id, 0 AS step, NULL::timestamptz AS item_created_at, NULL::text AS item_id,
            'reset' AS operation_type, s.monthly_tokens_used AS amount,
            s.monthly_limit AS balance_after, NULL::text AS feature,
            jsonb_build_object(
                'previous_used', s.monthly_tokens_used,
                'previous_period_start', @schema@.token_ledger_iso(s.last_monthly_reset),
                'period_start', @schema@.token_ledger_iso(s.period_start))
                || CASE WHEN s.rollover = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object('rollover', s.rollover) END AS operation_context,
            CASE WHEN s.monthly_tokens_used = 0 THEN '{}'::jsonb
                ELSE jsonb_build_object('usage', -s.monthly_tokens_used) END
                || CASE WHEN s.rollover = 0 THEN '{}'::jsonb
                    ELSE jsonb_build_object('grants', jsonb_build_object(s.rollover_id, s.rollover))
                    END AS effects,
            NULL::text AS reference
        FROM settled AS s WHERE s.stale
        UNION ALL
        SELECT g.user_id, 1, g.created_at, g.id, 'expire', g.remaining,
            greatest(s.monthly_limit - s.used_after, 0), NULL,
            jsonb_build_object('expires_at', @schema@.token_ledger_iso(g.expires_at)),
            jsonb_build_object('grants', jsonb_build_object(g.id, -g.remaining)), g.id
        FROM expired_grants AS g JOIN settled AS s ON s.user_id = g.user_id
        UNION ALL
        SELECT h.user_id, 2, h.created_at, h.id, 'release', h.amount,
            greatest(s.monthly_limit - s.used_after, 0), h.feature,
            jsonb_build_object('reason', 'expired',
                'expires_at', @schema@.token_ledger_iso(h.expires_at)),
            jsonb_build_object('reserved', -h.amount), h.id
        FROM expired_holds AS h JOIN settled AS s ON s.user_id = h.user_id
    ),
    logged AS (
        INSERT INTO @schema@.token_transactions (user_id, operation_type, amount, created_at,
            balance_after, success, feature, operation_context, effects, reference)
        SELECT e.user_id, e.operation_type, e.amount, p_now, e.balance_after, true, e.feature,
            e.operation_context, e.effects, e.reference
        FROM entries AS e ORDER BY e.user_id, e.step, e.item_created_at, e.item_id
    )
    SELECT count(*) FILTER (WHERE s.stale) INTO reset_count FROM settled AS s;
END
$$;

-- Checks of TokenLedger's input checks, for the functions below.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_check_text(
    p_value text, p_name text, p_required boolean
) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL AND NOT p_required THEN
        RETURN;
    END IF;
    IF p_value IS NULL OR btrim(p_value, E' \t\n\r\f\v') = '' THEN
        RAISE EXCEPTION '% must be a non-empty string, got %', p_name, coalesce(p_value, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF char_length(p_value) > 255 THEN
        RAISE EXCEPTION '% must be at most 255 characters', p_name USING ERRCODE = '22023';
    END IF;
END
$$;

-- The accounts deduct_tokens does not cover, refused with 0A000 (feature_not_supported)
-- before anything is written: a member, whose deduction must fit and be recorded against
-- every organisation above it, and an account with spending windows, each of which must
-- count it. The library deducts from both (TokenLedger.deduct, or ledger.within(conn) in
-- the caller's transaction).
CREATE OR REPLACE FUNCTION @schema@.token_ledger_check_covered(p @schema@.user_tokens)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p.organisation_id IS NOT NULL THEN
        RAISE EXCEPTION 'deduct_tokens does not cover account %: it is a member of organisation %',
            p.user_id, p.organisation_id
            USING ERRCODE = '0A000',
                DETAIL = 'A member''s deduction must fit, and is recorded against, the budget'
                    ' of every organisation above it too. Nothing was written.',
                HINT = 'Deduct through token-ledger (TokenLedger.deduct, or ledger.within(...)'
                    ' in this transaction), which charges the organisation too.';
    END IF;
    IF p.spending_windows IS NOT NULL THEN
        RAISE EXCEPTION 'deduct_tokens does not cover account %: it has spending windows',
            p.user_id
            USING ERRCODE = '0A000',
                DETAIL = 'A deduction must fit, and is counted in, each of its hour, day or'
                    ' week windows. Nothing was written.',
                HINT = 'Deduct through token-ledger (TokenLedger.deduct, or ledger.within(...)'
                    ' in this transaction), which counts it in every window.';
    END IF;
END
$$;

-- What one more deduction may take: allowance, live grants and overage, less holds
-- (TokenAccount.spendable, for a row already settled).
CREATE OR REPLACE FUNCTION @schema@.token_ledger_spendable(p @schema@.user_tokens)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT greatest(0, greatest(0, p.monthly_limit::numeric - p.monthly_tokens_used)
        + p.grant_balance
        + greatest(0, p.monthly_limit::numeric + p.overage_limit
            - greatest(p.monthly_tokens_used, p.monthly_limit))
        - p.reserved_tokens)
$$;

-- The ledger's default notification thresholds, as installed ('80%,100%,nothing_left',
-- '' for none): those of every account whose notification_thresholds is NULL.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_default_thresholds() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT @thresholds@::text $$;

-- Record a notification for each threshold in effect that a write took the account
-- over: reached by p_after, not by p_before (the row as the write found it, settled),
-- as token_ledger.thresholds.crossed decides. Under the notifications' advisory lock,
-- like the library, so ids commit in order; occurrence counts the earlier crossings.
CREATE OR REPLACE FUNCTION @schema@.token_ledger_notify(
    p_before @schema@.user_tokens, p_after @schema@.user_tokens, p_now timestamptz,
    p_transaction_id bigint
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key text;
    v_percent numeric;
    v_before boolean;
    v_after boolean;
    v_locked boolean := false;
BEGIN
    FOREACH v_key IN ARRAY string_to_array(coalesce(p_after.notification_thresholds,
        @schema@.token_ledger_default_thresholds()), ',')
    LOOP
        IF v_key = 'nothing_left' THEN
            v_before := @schema@.token_ledger_spendable(p_before) = 0;
            v_after := @schema@.token_ledger_spendable(p_after) = 0;
        ELSE
            v_percent := rtrim(v_key, '%')::numeric;
            v_before := p_before.monthly_tokens_used::numeric * 100
                >= v_percent * p_before.monthly_limit;
            v_after := p_after.monthly_tokens_used::numeric * 100
                >= v_percent * p_after.monthly_limit;
        END IF;
        IF v_after AND NOT v_before THEN
            IF NOT v_locked THEN
                PERFORM pg_advisory_xact_lock(@notification_lock_key@);
                v_locked := true;
            END IF;
            INSERT INTO @schema@.token_notifications AS n (user_id, threshold, period_start,
                created_at, transaction_id, monthly_used, monthly_limit, total_remaining,
                occurrence)
            SELECT p_after.user_id, v_key, p_after.last_monthly_reset, p_now, p_transaction_id,
                p_after.monthly_tokens_used, p_after.monthly_limit,
                @schema@.token_ledger_spendable(p_after)::bigint,
                1 + (SELECT count(*) FROM @schema@.token_notifications AS e
                    WHERE e.user_id = p_after.user_id AND e.threshold = v_key
                    AND e.period_start = p_after.last_monthly_reset);
        END IF;
    END LOOP;
END
$$;

-- TokenLedger.deduct for callers that have only SQL, in the caller's
-- transaction: the row is locked, a pending reset is written (and expired
-- grants and holds), then p_amount is spent from the monthly allowance,
-- then grants (lowest priority first; then soonest expiry, grants that never
-- expire last; then oldest), then overage. When too few tokens remain (allowance, grants and
-- overage, less what reservations hold) a failed entry is written and
-- success is false: nothing is raised, so the entry is kept. A retry with
-- the same p_idempotency_key returns the original result and writes
-- nothing; the key used for another user, amount or feature raises 23505.
-- A missing account raises P0002, a bad argument 22023, and a member or an
-- account with windows 0A000 (token_ledger_check_covered), after a retry's
-- key is answered: a retry writes nothing, so it is answered for any account.
-- An organisation's own budget is spent like any account's: its members' writers lock
-- its row first, and this locks only that row; its share holds count in
-- reserved_tokens and expire like any hold.
CREATE OR REPLACE FUNCTION @schema@.deduct_tokens(
    p_user_id text,
    p_amount bigint,
    p_feature text DEFAULT NULL,
    p_context jsonb DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_now timestamptz DEFAULT now()
) RETURNS TABLE (success boolean, monthly_remaining bigint, transaction_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_stored @schema@.user_tokens;
    v_account @schema@.user_tokens;
    v_settled @schema@.user_tokens;
    v_prior @schema@.token_transactions;
    v_spendable numeric;
    v_from_allowance bigint;
    v_left bigint;
    v_usage bigint;
    v_take bigint;
    v_taken jsonb := '{}';
    v_effects jsonb := '{}';
    v_grant record;
    v_id bigint;
BEGIN
    PERFORM @schema@.token_ledger_check_text(p_user_id, 'user_id', true);
    PERFORM @schema@.token_ledger_check_text(p_feature, 'feature', false);
    PERFORM @schema@.token_ledger_check_text(p_idempotency_key, 'idempotency_key', false);
    IF p_amount IS NULL OR p_amount < 1 THEN
        RAISE EXCEPTION 'amount must be between 1 and 9223372036854775807, got %',
            coalesce(p_amount::text, 'NULL') USING ERRCODE = '22023';
    END IF;
    IF p_context IS NOT NULL AND jsonb_typeof(p_context) <> 'object' THEN
        RAISE EXCEPTION 'context must be a JSON object, got %', p_context
            USING ERRCODE = '22023';
    END IF;
    IF p_now IS NULL THEN
        RAISE EXCEPTION 'p_now must be an instant, got NULL' USING ERRCODE = '22023';
    END IF;

    v_stored := @schema@.token_ledger_lock_account(p_user_id);

    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO v_prior FROM @schema@.token_transactions AS e
        WHERE e.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            IF v_prior.operation_type <> 'deduct' OR v_prior.user_id <> p_user_id
                OR v_prior.feature IS DISTINCT FROM p_feature OR v_prior.amount <> p_amount
            THEN
                RAISE EXCEPTION 'idempotency key % was already used for % user=% amount=% feature=%',
                    p_idempotency_key, v_prior.operation_type, v_prior.user_id, v_prior.amount,
                    coalesce(v_prior.feature, 'NULL')
                    USING ERRCODE = '23505';
            END IF;
            RETURN QUERY SELECT v_prior.success, v_prior.balance_after, v_prior.id;
            RETURN;
        END IF;
    END IF;
    PERFORM @schema@.token_ledger_check_covered(v_stored);

    v_account := @schema@.token_ledger_settle(v_stored, p_now);
    v_settled := v_account;
    v_spendable := greatest(0,
        greatest(0, v_account.monthly_limit::numeric - v_account.monthly_tokens_used)
        + v_account.grant_balance
        + greatest(0, v_account.monthly_limit::numeric + v_account.overage_limit
            - greatest(v_account.monthly_tokens_used, v_account.monthly_limit))
        - v_account.reserved_tokens);

    IF p_amount > v_spendable THEN
        INSERT INTO @schema@.token_transactions AS e (user_id, operation_type, amount,
            created_at, balance_after, success, feature, operation_context, idempotency_key)
        VALUES (p_user_id, 'deduct', p_amount, p_now,
            greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0), false,
            p_feature, coalesce(p_context, '{}'), p_idempotency_key)
        RETURNING e.id INTO v_id;
        PERFORM @schema@.token_ledger_save(v_stored, v_account, p_now);
        RETURN QUERY SELECT false,
            greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0), v_id;
        RETURN;
    END IF;

    v_from_allowance := least(p_amount,
        greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0));
    v_left := p_amount - v_from_allowance;
    IF v_left > 0 AND v_account.grant_balance > 0 THEN
        FOR v_grant IN
            SELECT g.id, g.remaining FROM @schema@.token_grants AS g
            WHERE g.user_id = p_user_id AND g.remaining > 0
            ORDER BY g.priority, g.expires_at IS NULL, coalesce(g.expires_at, g.created_at),
                g.created_at, g.id COLLATE "C"
        LOOP
            v_take := least(v_left, v_grant.remaining);
            UPDATE @schema@.token_grants AS g SET remaining = g.remaining - v_take
            WHERE g.id = v_grant.id;
            v_taken := v_taken || jsonb_build_object(v_grant.id, -v_take);
            v_left := v_left - v_take;
            EXIT WHEN v_left = 0;
        END LOOP;
    END IF;
    v_usage := v_from_allowance + v_left;
    v_account.monthly_tokens_used := v_account.monthly_tokens_used + v_usage;
    v_account.grant_balance := v_account.grant_balance - (p_amount - v_usage);
    IF v_usage <> 0 THEN
        v_effects := jsonb_build_object('usage', v_usage);
    END IF;
    IF v_taken <> '{}' THEN
        v_effects := v_effects || jsonb_build_object('grants', v_taken);
    END IF;
    PERFORM @schema@.token_ledger_save(v_stored, v_account, p_now);
    INSERT INTO @schema@.token_transactions AS e (user_id, operation_type, amount, created_at,
        balance_after, success, feature, operation_context, idempotency_key, effects)
    VALUES (p_user_id, 'deduct', p_amount, p_now,
        greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0), true, p_feature,
        coalesce(p_context, '{}'), p_idempotency_key, v_effects)
    RETURNING e.id INTO v_id;
    PERFORM @schema@.token_ledger_notify(v_settled, v_account, p_now, v_id);
    RETURN QUERY SELECT true,
        greatest(v_account.monthly_limit - v_account.monthly_tokens_used, 0), v_id;
END
$$;
