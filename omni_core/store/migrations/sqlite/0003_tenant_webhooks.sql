-- Tenant webhooks: secret rotation (both secrets valid during the overlap), failure tracking for
-- automatic disabling, and a note on why a webhook was disabled.
ALTER TABLE webhooks ADD COLUMN description TEXT;
ALTER TABLE webhooks ADD COLUMN secret_previous TEXT;
ALTER TABLE webhooks ADD COLUMN previous_valid_until REAL;
ALTER TABLE webhooks ADD COLUMN failing_since REAL;
ALTER TABLE webhooks ADD COLUMN disabled_reason TEXT;
CREATE INDEX jobs_kind ON jobs (tenant_id, kind, seq);
