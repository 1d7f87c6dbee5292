-- 0001_initial: the checkpoint table, the entity map and the dead letters.
--
-- Applied by `pivotal-sync migrate` (and at start-up) inside one transaction, under an
-- advisory lock; recorded in schema_migrations. Never edit a shipped migration: add the next
-- numbered file.
--
-- Names are unqualified: the tables land in the first schema of the connection's search_path
-- (`public` by default; put `?search_path=pivotal_sync` in the DSN to keep them apart).
-- `partition` and `offset` are SQL keywords, hence `kafka_partition` and `kafka_offset`.

CREATE TABLE checkpoints (
    event_id text PRIMARY KEY,
    outcome text NOT NULL CHECK (
        outcome IN ('sent', 'coalesced', 'superseded', 'duplicate', 'stale', 'noop', 'dead_lettered')
    ),
    entity_kind text CHECK (entity_kind IN ('customer', 'contact', 'onboarding')),
    entity_external_id text,
    pivotal_id text,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((entity_kind IS NULL) = (entity_external_id IS NULL))
);

-- Retention (delete what is older than the topic's retention) and "last checkpoint" in status.
CREATE INDEX checkpoints_finished_at_idx ON checkpoints (finished_at);

COMMENT ON TABLE checkpoints IS
    'One row per finished event id: the completed ids a replay skips (pivotal-sync).';
COMMENT ON COLUMN checkpoints.event_id IS
    'CloudEvents id; for a record that never parsed, record:{topic}:{partition}:{offset}.';
COMMENT ON COLUMN checkpoints.outcome IS
    'How the event finished: sent, coalesced, superseded, duplicate, stale, noop, dead_lettered.';
COMMENT ON COLUMN checkpoints.entity_kind IS
    'customer, contact or onboarding; NULL when the record never became an event.';
COMMENT ON COLUMN checkpoints.entity_external_id IS
    'CRM id of the entity the event changed; NULL with entity_kind.';
COMMENT ON COLUMN checkpoints.pivotal_id IS
    'Pivotal id of the entity after the event, when known.';
COMMENT ON COLUMN checkpoints.topic IS 'Kafka topic the event was read from.';
COMMENT ON COLUMN checkpoints.kafka_partition IS 'Kafka partition the event was read from.';
COMMENT ON COLUMN checkpoints.kafka_offset IS 'Kafka offset of the event''s record.';
COMMENT ON COLUMN checkpoints.finished_at IS 'When the checkpoint batch holding it committed.';


CREATE TABLE entities (
    kind text NOT NULL CHECK (kind IN ('customer', 'contact', 'onboarding')),
    external_id text NOT NULL,
    pivotal_id text,
    customer_external_id text NOT NULL,
    last_sequence bigint,
    deleted boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, external_id)
);

COMMENT ON TABLE entities IS
    'The entity map: CRM entity -> Pivotal id. The only way to find a Pivotal record again.';
COMMENT ON COLUMN entities.kind IS 'customer, contact or onboarding.';
COMMENT ON COLUMN entities.external_id IS 'CRM id of the entity (the event subject).';
COMMENT ON COLUMN entities.pivotal_id IS
    'Pivotal id; NULL until Pivotal has the entity. Kept after a delete, for tracing.';
COMMENT ON COLUMN entities.customer_external_id IS
    'CRM id of the customer the entity belongs to (its own id for a customer).';
COMMENT ON COLUMN entities.last_sequence IS
    'Highest CloudEvents sequence applied, for stale detection; never moves backwards.';
COMMENT ON COLUMN entities.deleted IS 'True once the entity was deleted in Pivotal.';
COMMENT ON COLUMN entities.updated_at IS 'When the row last changed.';


CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    reason text NOT NULL,
    detail text NOT NULL,
    http_status integer,
    response_body text,
    attempts integer NOT NULL CHECK (attempts >= 0),
    times_seen integer NOT NULL DEFAULT 1 CHECK (times_seen >= 1),
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    record_key bytea,
    record_value bytea,
    record_headers jsonb NOT NULL DEFAULT '[]',
    record_timestamp_ms bigint,
    entity_kind text CHECK (entity_kind IN ('customer', 'contact', 'onboarding')),
    entity_external_id text,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    retried_at timestamptz,
    retry_count integer NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    CHECK ((entity_kind IS NULL) = (entity_external_id IS NULL))
);

-- The operator tools list newest first and filter by reason.
CREATE INDEX dead_letters_last_seen_idx ON dead_letters (last_seen DESC, id DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason);

COMMENT ON TABLE dead_letters IS
    'Events parked by a permanent failure, with exactly what arrived and what came back.';
COMMENT ON COLUMN dead_letters.id IS 'Handle for the operator tools (show, redrive, delete).';
COMMENT ON COLUMN dead_letters.event_id IS
    'CloudEvents id or record:{topic}:{partition}:{offset}; one row per event, seen again = updated.';
COMMENT ON COLUMN dead_letters.reason IS
    'Short snake_case code: invalid_json, unknown_type, http_400, parent_missing...';
COMMENT ON COLUMN dead_letters.detail IS 'Human-readable explanation of the latest failure.';
COMMENT ON COLUMN dead_letters.http_status IS 'HTTP status Pivotal answered; NULL if never sent.';
COMMENT ON COLUMN dead_letters.response_body IS 'Body of Pivotal''s answer, when there was one.';
COMMENT ON COLUMN dead_letters.attempts IS 'Requests spent on the event, summed over every time seen.';
COMMENT ON COLUMN dead_letters.times_seen IS 'How many times the event was dead-lettered.';
COMMENT ON COLUMN dead_letters.topic IS 'Kafka topic of the record (latest time seen).';
COMMENT ON COLUMN dead_letters.kafka_partition IS 'Kafka partition of the record.';
COMMENT ON COLUMN dead_letters.kafka_offset IS 'Kafka offset of the record.';
COMMENT ON COLUMN dead_letters.record_key IS 'Record key bytes as they arrived; NULL if none.';
COMMENT ON COLUMN dead_letters.record_value IS 'Record value bytes as they arrived; NULL = tombstone.';
COMMENT ON COLUMN dead_letters.record_headers IS
    'Record headers in order: [name, text] for UTF-8 values, [name, base64, "base64"] otherwise.';
COMMENT ON COLUMN dead_letters.record_timestamp_ms IS 'Record timestamp, epoch milliseconds.';
COMMENT ON COLUMN dead_letters.entity_kind IS 'customer, contact or onboarding; NULL if unparsed.';
COMMENT ON COLUMN dead_letters.entity_external_id IS 'CRM id of the entity; NULL if unparsed.';
COMMENT ON COLUMN dead_letters.first_seen IS 'When the event was first dead-lettered.';
COMMENT ON COLUMN dead_letters.last_seen IS 'When the event was last dead-lettered.';
COMMENT ON COLUMN dead_letters.retried_at IS 'When an operator last redrove it; NULL if never.';
COMMENT ON COLUMN dead_letters.retry_count IS
    'Times redriven; the redrive tool refuses past a limit so a poison event cannot loop.';
