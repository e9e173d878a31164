-- Initial schema (PostgreSQL). Same tables and meaning as the SQLite dialect: timestamps are
-- ISO 8601 UTC text, job scheduling uses epoch seconds.
CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    config         TEXT NOT NULL DEFAULT '{}',
    api_key_hash   TEXT NOT NULL UNIQUE,
    webhook_secret TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    channel       TEXT NOT NULL,
    config        TEXT NOT NULL DEFAULT '{}',
    state         TEXT NOT NULL,
    state_reason  TEXT,
    qrcode_base64 TEXT,
    qrcode_code   TEXT,
    pairing_code  TEXT,
    profile       TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (channel, name)
);
CREATE INDEX instances_tenant ON instances (tenant_id, name);

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    instance    TEXT NOT NULL,
    source      TEXT NOT NULL,
    direction   TEXT NOT NULL,
    external_id TEXT,
    chat_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    timestamp   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        BYTEA NOT NULL
);
CREATE UNIQUE INDEX messages_dedup ON messages (tenant_id, instance, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX messages_tenant ON messages (tenant_id, id);
CREATE INDEX messages_chat ON messages (tenant_id, instance, chat_id, id);

CREATE TABLE jobs (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    lane         TEXT NOT NULL,
    message_id   TEXT,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       DOUBLE PRECISION NOT NULL,
    lease_owner  TEXT,
    lease_until  DOUBLE PRECISION,
    last_error   TEXT,
    payload      TEXT NOT NULL DEFAULT '{}',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX jobs_active ON jobs (lane, seq) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_message ON jobs (message_id);
CREATE INDEX jobs_status ON jobs (status, run_at);

CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL DEFAULT '[]',
    secret     TEXT NOT NULL,
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id);

CREATE TABLE traces (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    message_id  TEXT,
    job_id      TEXT,
    stage       TEXT NOT NULL,
    plugin      TEXT,
    attempt     INTEGER,
    at          TEXT NOT NULL,
    duration_ms DOUBLE PRECISION,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT
);
CREATE INDEX traces_message ON traces (message_id, id);
CREATE INDEX traces_tenant ON traces (tenant_id, id);
