-- Idempotency keys of sends (POST /messages/send, outbound POST /messages/unified): one row per
-- tenant and key, written in the same transaction as the send's messages and jobs. The primary
-- key is what makes a concurrent second insert of one key wait for the first and then conflict.
-- `response` is the JSON answer replayed to retries; `created_at` (ISO text) is what the TTL and
-- the purge read.
CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
