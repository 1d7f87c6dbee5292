-- 0003_quota_ledger: the API key's sliding window, shared by every replica (daemon/quota_ledger.py).
--
-- One row per request in `quota_slots` while it holds a slot of the key's window; one row per
-- key in `quota_keys` with what the replicas learned from the headers; one row per live replica
-- in `quota_replicas`. The key is a SHA-256 of the API key, never the key. Every timestamp is
-- the database's clock (clock_timestamp()), so clock skew between pods cannot matter: replicas
-- send only durations ("answered 0.8 s ago"), measured on their own monotonic clocks.

CREATE TABLE quota_keys (
    key_hash bytea PRIMARY KEY,
    limit_per_window integer CHECK (limit_per_window > 0),
    window_seconds double precision NOT NULL DEFAULT 60 CHECK (window_seconds > 0),
    window_fixed boolean NOT NULL DEFAULT false,
    blocked_until timestamptz,
    auth_paused_until timestamptz,
    outside integer NOT NULL DEFAULT 0,
    outside_until timestamptz,
    grants_total bigint NOT NULL DEFAULT 0
);

COMMENT ON TABLE quota_keys IS 'One API key''s quota as every replica sees it; locked per call.';
COMMENT ON COLUMN quota_keys.key_hash IS 'SHA-256 of the API key (never the key itself).';
COMMENT ON COLUMN quota_keys.limit_per_window IS 'X-RateLimit-Limit last seen; NULL until then.';
COMMENT ON COLUMN quota_keys.window_seconds IS 'The window: configured, or learned from Reset.';
COMMENT ON COLUMN quota_keys.window_fixed IS 'True when configured: learning does not move it.';
COMMENT ON COLUMN quota_keys.blocked_until IS 'No grant before this (a 429''s Retry-After).';
COMMENT ON COLUMN quota_keys.auth_paused_until IS 'No grant before this (a 401; renewed while it lasts).';
COMMENT ON COLUMN quota_keys.outside IS 'Requests the server counted that no replica reserved.';
COMMENT ON COLUMN quota_keys.outside_until IS 'When the outside count stops holding slots.';
COMMENT ON COLUMN quota_keys.grants_total IS 'Slots granted so far (a counter replicas diff).';

CREATE TABLE quota_replicas (
    key_hash bytea NOT NULL,
    replica uuid NOT NULL,
    seen_at timestamptz NOT NULL,
    waiting integer NOT NULL DEFAULT 0,
    wanted_at timestamptz,
    PRIMARY KEY (key_hash, replica)
);

COMMENT ON TABLE quota_replicas IS 'Replicas alive on a key (a lease: gone after seen_at + lease).';
COMMENT ON COLUMN quota_replicas.key_hash IS 'The key (quota_keys.key_hash) it sends with.';
COMMENT ON COLUMN quota_replicas.replica IS 'Random per process start.';
COMMENT ON COLUMN quota_replicas.seen_at IS 'Its last call (calls are the heartbeat).';
COMMENT ON COLUMN quota_replicas.waiting IS 'Requests it still waited to send after its last call.';
COMMENT ON COLUMN quota_replicas.wanted_at IS 'Its last call that wanted a slot (a fair share while recent).';

CREATE TABLE quota_slots (
    id bigserial PRIMARY KEY,
    key_hash bytea NOT NULL,
    replica uuid NOT NULL,
    reserved_at timestamptz NOT NULL,
    arrived_at timestamptz
);

CREATE INDEX quota_slots_key ON quota_slots (key_hash, arrived_at);

COMMENT ON TABLE quota_slots IS 'Requests holding a slot of their key''s window.';
COMMENT ON COLUMN quota_slots.id IS 'Surrogate key.';
COMMENT ON COLUMN quota_slots.key_hash IS 'The key (quota_keys.key_hash) whose window it counts in.';
COMMENT ON COLUMN quota_slots.replica IS 'The replica that reserved it (quota_replicas.replica).';
COMMENT ON COLUMN quota_slots.reserved_at IS 'When the slot was granted (before the send).';
COMMENT ON COLUMN quota_slots.arrived_at IS
    'Latest time the request can have reached the server; NULL while in flight. Frees one window later.';

-- One call per round trip: report what finished, publish what was learned, take slots.
-- Serialised per key by the row lock on quota_keys, so the count and the insert are exact.
CREATE FUNCTION quota_reserve(
    p_key bytea,
    p_replica uuid,
    p_want integer,                       -- slots wanted now
    p_in_flight bigint[],                 -- this replica's granted slots not yet reported
    p_done bigint[],                      -- slots whose request finished...
    p_done_age double precision[],        -- ...arrived at the latest this many seconds ago
    p_done_counted boolean[],             -- false: not counted by the server (a 429)
    p_extra_age double precision[],       -- requests sent outside the ledger (fallback), ages
    p_limit integer,                      -- newly learned limit, or NULL
    p_window double precision,            -- newly learned or configured window, or NULL
    p_window_fixed boolean,
    p_blocked_seconds double precision,   -- a Retry-After to share, or NULL
    p_auth_pause_seconds double precision,-- > 0: paused for this long; 0: resumed; NULL: no news
    p_outside integer,                    -- requests seen counted that no replica reserved
    p_lease_seconds double precision,
    p_active_seconds double precision
) RETURNS TABLE (
    granted bigint[],
    wait_seconds double precision,
    limit_per_window integer,
    window_seconds double precision,
    blocked_seconds double precision,
    auth_paused boolean,
    held integer,
    grants_total bigint,
    replicas integer
)
LANGUAGE plpgsql AS $$
DECLARE
    k quota_keys%ROWTYPE;
    now_ timestamptz;
    win interval;
    n_held integer;
    n_mine integer;
    n_active integer;
    others_waiting integer;
    n_outside integer;
    take integer := 0;
    ids bigint[] := '{}';
    wait double precision;
BEGIN
    INSERT INTO quota_keys (key_hash) VALUES (p_key) ON CONFLICT DO NOTHING;
    SELECT * INTO k FROM quota_keys AS q WHERE q.key_hash = p_key FOR UPDATE;
    -- The clock is read after the lock: grants are in time order, whoever waited longest.
    now_ := clock_timestamp();

    IF p_limit IS NOT NULL THEN
        k.limit_per_window := p_limit;
    END IF;
    IF p_window IS NOT NULL AND (p_window_fixed OR NOT k.window_fixed) THEN
        k.window_seconds := p_window;
        k.window_fixed := p_window_fixed;
    END IF;
    IF p_blocked_seconds IS NOT NULL AND p_blocked_seconds > 0 THEN
        k.blocked_until := greatest(k.blocked_until, now_ + make_interval(secs => p_blocked_seconds));
    END IF;
    IF p_auth_pause_seconds IS NOT NULL THEN
        k.auth_paused_until := CASE WHEN p_auth_pause_seconds > 0
            THEN now_ + make_interval(secs => p_auth_pause_seconds) END;
    END IF;
    win := make_interval(secs => k.window_seconds);
    IF p_outside IS NOT NULL AND p_outside > 0 THEN
        k.outside := CASE WHEN k.outside_until > now_ THEN greatest(k.outside, p_outside)
            ELSE p_outside END;
        k.outside_until := now_ + win;
    END IF;

    -- Finished requests hold their slot until one window after their latest arrival; a 429
    -- holds none (the server did not count it).
    UPDATE quota_slots AS s SET arrived_at = now_ - make_interval(secs => d.age)
    FROM unnest(p_done, p_done_age, p_done_counted) AS d (id, age, counted)
    WHERE s.id = d.id AND d.counted AND s.replica = p_replica;
    DELETE FROM quota_slots AS s
    USING unnest(p_done, p_done_counted) AS d (id, counted)
    WHERE s.id = d.id AND NOT d.counted AND s.replica = p_replica;
    -- Slots this replica no longer knows of (granted by a call whose answer was lost): they may
    -- have been sent by no one, but count them as sent now.
    UPDATE quota_slots AS s SET arrived_at = now_
    WHERE s.key_hash = p_key AND s.replica = p_replica AND s.arrived_at IS NULL
      AND s.id <> ALL (coalesce(p_in_flight, '{}'));
    INSERT INTO quota_slots (key_hash, replica, reserved_at, arrived_at)
    SELECT p_key, p_replica, now_ - make_interval(secs => a), now_ - make_interval(secs => a)
    FROM unnest(p_extra_age) AS a
    WHERE a < k.window_seconds;

    -- A replica silent for a lease is dead: its requests in flight reached the server by now
    -- at the latest, so they free one window from now. Then it has no share any more.
    UPDATE quota_slots AS s SET arrived_at = now_
    FROM quota_replicas AS r
    WHERE s.key_hash = p_key AND s.arrived_at IS NULL AND r.key_hash = p_key
      AND r.replica = s.replica AND r.seen_at < now_ - make_interval(secs => p_lease_seconds);
    DELETE FROM quota_replicas AS r
    WHERE r.key_hash = p_key AND r.seen_at < now_ - make_interval(secs => p_lease_seconds);
    DELETE FROM quota_slots AS s WHERE s.key_hash = p_key AND s.arrived_at <= now_ - win;

    SELECT count(*), count(*) FILTER (WHERE s.replica = p_replica)
    INTO n_held, n_mine FROM quota_slots AS s WHERE s.key_hash = p_key;
    n_outside := CASE WHEN k.outside_until > now_ THEN k.outside ELSE 0 END;
    SELECT count(*) + 1, coalesce(sum(r.waiting), 0) INTO n_active, others_waiting
    FROM quota_replicas AS r
    WHERE r.key_hash = p_key AND r.replica <> p_replica
      AND (r.waiting > 0 OR r.wanted_at > now_ - make_interval(secs => p_active_seconds));

    IF p_want <= 0 OR k.blocked_until > now_ OR k.auth_paused_until > now_ THEN
        take := 0;
    ELSIF k.limit_per_window IS NULL THEN
        -- No response has shown the limit yet: one request at a time for the whole key.
        take := CASE WHEN NOT EXISTS (
            SELECT 1 FROM quota_slots AS s WHERE s.key_hash = p_key AND s.arrived_at IS NULL
        ) THEN 1 ELSE 0 END;
    ELSE
        take := least(p_want, k.limit_per_window - n_held - n_outside);
        IF others_waiting > 0 THEN
            -- Fair shares among replicas with work; a replica with none has no share.
            take := least(take, ceil(k.limit_per_window::numeric / n_active)::integer - n_mine);
        END IF;
        take := greatest(take, 0);
    END IF;

    IF take > 0 THEN
        WITH inserted AS (
            INSERT INTO quota_slots (key_hash, replica, reserved_at)
            SELECT p_key, p_replica, now_ FROM generate_series(1, take)
            RETURNING id
        )
        SELECT array_agg(id ORDER BY id) INTO ids FROM inserted;
        k.grants_total := k.grants_total + take;
    END IF;

    INSERT INTO quota_replicas AS r (key_hash, replica, seen_at, waiting, wanted_at)
    VALUES (p_key, p_replica, now_, p_want - take, CASE WHEN p_want > 0 THEN now_ END)
    ON CONFLICT (key_hash, replica) DO UPDATE
    SET seen_at = EXCLUDED.seen_at, waiting = EXCLUDED.waiting,
        wanted_at = coalesce(EXCLUDED.wanted_at, r.wanted_at);

    UPDATE quota_keys AS q SET
        limit_per_window = k.limit_per_window, window_seconds = k.window_seconds,
        window_fixed = k.window_fixed, blocked_until = k.blocked_until,
        auth_paused_until = k.auth_paused_until, outside = k.outside,
        outside_until = k.outside_until, grants_total = k.grants_total
    WHERE q.key_hash = p_key;

    -- When to ask again if not everything was granted: a block's end, or the next slot to
    -- free (this replica's own oldest when it is at its share); NULL: only slots in flight.
    IF k.blocked_until > now_ THEN
        wait := extract(epoch FROM k.blocked_until - now_);
    ELSIF take < p_want THEN
        SELECT extract(epoch FROM min(s.arrived_at) + win - now_) INTO wait
        FROM quota_slots AS s
        WHERE s.key_hash = p_key AND s.arrived_at IS NOT NULL
          AND (others_waiting = 0 OR n_mine + take < ceil(k.limit_per_window::numeric / n_active)
               OR s.replica = p_replica);
    END IF;

    RETURN QUERY SELECT
        ids,
        greatest(wait, 0),
        k.limit_per_window,
        k.window_seconds,
        greatest(extract(epoch FROM k.blocked_until - now_), 0)::double precision,
        coalesce(k.auth_paused_until > now_, false),
        n_held + take,
        k.grants_total,
        (SELECT count(*)::integer FROM quota_replicas AS r WHERE r.key_hash = p_key);
END;
$$;

COMMENT ON FUNCTION quota_reserve IS
    'Report finished requests, share learned state, and take up to p_want slots of the window.';
