-- Tenant webhook secret rotation: the secret replaced last stays valid for inbound channel
-- webhooks until `webhook_secret_previous_until` (epoch seconds), so channel servers can be
-- re-pointed at the new one without losing events. NULL when there is no overlap.
ALTER TABLE tenants ADD COLUMN webhook_secret_previous TEXT;
ALTER TABLE tenants ADD COLUMN webhook_secret_previous_until REAL;
