-- The checkpoint store's queries, one per block: `-- name --`, a one-line comment, the SQL.
-- Loaded by daemon/checkpoints.py. Arrays go in whole (= ANY, unnest): one round trip per
-- statement whatever the batch size.

-- create_schema_migrations --
-- The ledger of applied migrations (runs under the migration lock, before the migrations)
CREATE TABLE IF NOT EXISTS schema_migrations (
    name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS 'Migrations of pivotal-sync applied to this database.';
COMMENT ON COLUMN schema_migrations.name IS 'File name without .sql, e.g. 0001_initial.';
COMMENT ON COLUMN schema_migrations.applied_at IS 'When it was applied.';

-- lock_migrations --
-- Serialise migrate() across replicas: a session lock, so it spans several transactions
SELECT pg_advisory_lock($1);

-- unlock_migrations --
-- Release the migration lock
SELECT pg_advisory_unlock($1);

-- applied_migrations --
-- Names of the migrations this database already has
SELECT name FROM schema_migrations ORDER BY name;

-- insert_migration --
-- Record one applied migration
INSERT INTO schema_migrations (name) VALUES ($1);

-- ping --
-- Readiness: the pool can reach the server
SELECT 1;

-- finished_ids --
-- Which of these event ids already have a checkpoint row
SELECT event_id FROM checkpoints WHERE event_id = ANY($1::text[]);

-- checkpoints_of --
-- Checkpoint rows of (event id, record) pairs, by ordinal: written for that very record or not?
SELECT i.n, c.entity_kind, c.entity_external_id,
    c.topic = i.topic AND c.kafka_partition = i.kafka_partition
        AND c.kafka_offset = i.kafka_offset AS same_record
FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[]) WITH ORDINALITY
    AS i (event_id, topic, kafka_partition, kafka_offset, n)
JOIN checkpoints AS c ON c.event_id = i.event_id;

-- load_entities --
-- Entity map rows for these (kind, external id) pairs
SELECT e.kind, e.external_id, e.pivotal_id, e.customer_external_id, e.last_sequence, e.deleted
FROM entities AS e
JOIN unnest($1::text[], $2::text[]) AS k (kind, external_id) USING (kind, external_id);

-- insert_checkpoints --
-- Mark events finished; an id finished before keeps its first row (replays are harmless)
INSERT INTO checkpoints (
    event_id, outcome, entity_kind, entity_external_id, pivotal_id,
    topic, kafka_partition, kafka_offset
)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::text[], $7::integer[], $8::bigint[]
)
ON CONFLICT (event_id) DO NOTHING;

-- upsert_entities --
-- Write entity map rows; a row never goes back to an older sequence than it has
INSERT INTO entities AS e (
    kind, external_id, pivotal_id, customer_external_id, last_sequence, deleted
)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::boolean[]
)
ON CONFLICT (kind, external_id) DO UPDATE SET
    pivotal_id = excluded.pivotal_id,
    customer_external_id = excluded.customer_external_id,
    last_sequence = greatest(e.last_sequence, excluded.last_sequence),
    deleted = excluded.deleted,
    updated_at = now()
WHERE excluded.last_sequence IS NULL
   OR e.last_sequence IS NULL
   OR excluded.last_sequence >= e.last_sequence;

-- upsert_dead_letters --
-- Park events; one seen again updates its row (latest failure, attempts summed) instead
INSERT INTO dead_letters AS d (
    event_id, reason, detail, http_status, response_body, attempts,
    topic, kafka_partition, kafka_offset, record_key, record_value, record_headers,
    record_timestamp_ms, entity_kind, entity_external_id
)
SELECT
    event_id, reason, detail, http_status, response_body, attempts,
    topic, kafka_partition, kafka_offset, record_key, record_value, record_headers::jsonb,
    record_timestamp_ms, entity_kind, entity_external_id
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::integer[],
    $7::text[], $8::integer[], $9::bigint[], $10::bytea[], $11::bytea[], $12::text[],
    $13::bigint[], $14::text[], $15::text[]
) AS t (
    event_id, reason, detail, http_status, response_body, attempts,
    topic, kafka_partition, kafka_offset, record_key, record_value, record_headers,
    record_timestamp_ms, entity_kind, entity_external_id
)
ON CONFLICT (event_id) DO UPDATE SET
    reason = excluded.reason,
    detail = excluded.detail,
    http_status = excluded.http_status,
    response_body = excluded.response_body,
    attempts = d.attempts + excluded.attempts,
    times_seen = d.times_seen + 1,
    topic = excluded.topic,
    kafka_partition = excluded.kafka_partition,
    kafka_offset = excluded.kafka_offset,
    record_key = excluded.record_key,
    record_value = excluded.record_value,
    record_headers = excluded.record_headers,
    record_timestamp_ms = excluded.record_timestamp_ms,
    entity_kind = excluded.entity_kind,
    entity_external_id = excluded.entity_external_id,
    last_seen = now();

-- save_intents --
-- Save create intents before their POSTs leave; a newer one for an entity replaces it
INSERT INTO create_intents (kind, external_id, idempotency_key, parent_id, body)
SELECT i.kind, i.external_id, i.idempotency_key, i.parent_id, i.body::json
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS i (kind, external_id, idempotency_key, parent_id, body)
ON CONFLICT (kind, external_id) DO UPDATE SET
    idempotency_key = excluded.idempotency_key,
    parent_id = excluded.parent_id,
    body = excluded.body,
    created_at = now();

-- load_intents --
-- Create intents of these (kind, external id) pairs
SELECT i.kind, i.external_id, i.idempotency_key, i.parent_id, i.body::text AS body
FROM create_intents AS i
JOIN unnest($1::text[], $2::text[]) AS k (kind, external_id) USING (kind, external_id);

-- delete_intents --
-- Drop settled create intents: the entity's id is durable, or its event was dead-lettered
DELETE FROM create_intents AS i
USING unnest($1::text[], $2::text[]) AS k (kind, external_id)
WHERE i.kind = k.kind AND i.external_id = k.external_id;

-- list_dead_letters --
-- Dead letters matching the operator's filters (NULL = any), newest first
SELECT * FROM dead_letters
WHERE ($1::text IS NULL OR reason = $1)
  AND ($2::integer IS NULL OR http_status = $2)
  AND ($3::text IS NULL OR entity_kind = $3)
  AND ($4::text IS NULL OR entity_external_id = $4)
  AND ($5::timestamptz IS NULL OR last_seen >= $5)
ORDER BY last_seen DESC, id DESC
LIMIT $6;

-- get_dead_letter --
-- One dead letter by id
SELECT * FROM dead_letters WHERE id = $1;

-- mark_dead_letters_retried --
-- Stamp dead letters as redriven, except those already redriven too often; returns the ids stamped
UPDATE dead_letters
SET retried_at = now(), retry_count = retry_count + 1
WHERE id = ANY($1::bigint[]) AND retry_count < $2
RETURNING id;

-- delete_dead_letters --
-- Delete dead letters by id and/or the list filters (NULL = any)
DELETE FROM dead_letters
WHERE ($1::bigint[] IS NULL OR id = ANY($1))
  AND ($2::text IS NULL OR reason = $2)
  AND ($3::integer IS NULL OR http_status = $3)
  AND ($4::text IS NULL OR entity_kind = $4)
  AND ($5::text IS NULL OR entity_external_id = $5)
  AND ($6::timestamptz IS NULL OR last_seen >= $6);

-- forget_events --
-- Delete checkpoint rows so these events run again (redrive, replay --force)
DELETE FROM checkpoints WHERE event_id = ANY($1::text[]);

-- count_outcomes --
-- Checkpoint rows by outcome, and the time of the newest
SELECT outcome, count(*) AS n, max(finished_at) AS last FROM checkpoints GROUP BY outcome;

-- count_dead_letters --
-- Dead letters by reason
SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason;

-- count_entities --
-- Entity map rows by kind and deleted flag
SELECT kind, deleted, count(*) AS n FROM entities GROUP BY kind, deleted;

-- prune_checkpoints --
-- Delete up to $2 checkpoint rows finished before $1, oldest first (retention)
DELETE FROM checkpoints
WHERE event_id IN (
    SELECT event_id FROM checkpoints WHERE finished_at < $1 ORDER BY finished_at LIMIT $2
);

-- event_outcomes --
-- What the daemon recorded for these event ids, with the dead letter when there is one
SELECT c.event_id, c.outcome, c.entity_kind, d.reason, d.attempts, d.http_status
FROM checkpoints AS c LEFT JOIN dead_letters AS d USING (event_id)
WHERE c.event_id = ANY($1::text[]);

-- dead_letter_states --
-- Dead letters by state: open (still failing), retrying (redriven, not finished), resolved
SELECT CASE
         WHEN c.event_id IS NULL THEN 'retrying'
         WHEN c.outcome <> 'dead_lettered' THEN 'resolved'
         ELSE 'open'
       END AS state,
       count(*) AS n
FROM dead_letters AS d LEFT JOIN checkpoints AS c USING (event_id)
GROUP BY 1;

-- quota_reserve --
-- The shared quota ledger's one round trip (daemon/quota_ledger.py; the function is in migration 0003)
SELECT * FROM quota_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16);
