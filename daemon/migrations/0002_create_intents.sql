-- 0002_create_intents: the create intents that make POSTs crash-proof (see daemon/entities.py).
--
-- Before the first POST for an entity, its Idempotency-Key and exact body are saved here; any
-- later attempt, after a restart too, re-sends that pair. The row goes when the entity's
-- Pivotal id is durable in `entities` (same transaction), or when its event is dead-lettered.

CREATE TABLE create_intents (
    kind text NOT NULL CHECK (kind IN ('customer', 'contact', 'onboarding')),
    external_id text NOT NULL,
    idempotency_key text NOT NULL,
    parent_id text,
    -- json, not jsonb: the body must come back byte for byte (key order included), because
    -- Pivotal answers a reused key with a different body with 409.
    body json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, external_id)
);

COMMENT ON TABLE create_intents IS
    'POSTs that may have been sent and whose result is not durable yet: replay exactly these.';
COMMENT ON COLUMN create_intents.kind IS 'customer, contact or onboarding.';
COMMENT ON COLUMN create_intents.external_id IS 'CRM id of the entity being created.';
COMMENT ON COLUMN create_intents.idempotency_key IS 'The Idempotency-Key header of the POST.';
COMMENT ON COLUMN create_intents.parent_id IS
    'Pivotal id of the parent customer the POST is addressed to; NULL for a customer.';
COMMENT ON COLUMN create_intents.body IS 'The POST body, verbatim (json keeps key order).';
COMMENT ON COLUMN create_intents.created_at IS 'When the intent was saved, before the POST.';
