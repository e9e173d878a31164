-- Tenant webhooks: secret rotation, failure tracking, and cache invalidation across replicas.
ALTER TABLE webhooks ADD COLUMN description TEXT;
ALTER TABLE webhooks ADD COLUMN secret_previous TEXT;
ALTER TABLE webhooks ADD COLUMN previous_valid_until DOUBLE PRECISION;
ALTER TABLE webhooks ADD COLUMN failing_since DOUBLE PRECISION;
ALTER TABLE webhooks ADD COLUMN disabled_reason TEXT;
ALTER TABLE webhooks ALTER COLUMN enabled DROP DEFAULT;
ALTER TABLE webhooks ALTER COLUMN enabled TYPE INTEGER USING CASE WHEN enabled THEN 1 ELSE 0 END;
ALTER TABLE webhooks ALTER COLUMN enabled SET DEFAULT 1;
CREATE INDEX jobs_kind ON jobs (tenant_id, kind, seq);
CREATE TRIGGER webhooks_notify AFTER INSERT OR UPDATE OR DELETE ON webhooks
    FOR EACH STATEMENT EXECUTE FUNCTION omni_notify_cache();
