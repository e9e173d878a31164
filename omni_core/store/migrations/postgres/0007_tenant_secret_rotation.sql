-- Tenant webhook secret rotation: the secret replaced last stays valid for inbound channel
-- webhooks until `webhook_secret_previous_until` (epoch seconds), so channel servers can be
-- re-pointed at the new one without losing events. NULL when there is no overlap. Rotations
-- (of this secret and of the API key hash) are UPDATEs of tenants, which tenants_notify (0002)
-- already announces on omni_cache, so every replica drops its cached tenants and key hashes.
ALTER TABLE tenants ADD COLUMN webhook_secret_previous TEXT;
ALTER TABLE tenants ADD COLUMN webhook_secret_previous_until DOUBLE PRECISION;
