-- Claiming takes work that finishes a message (deliveries, tenant webhooks) before starting new
-- work (routing inbound messages to the agent), so replies do not wait behind an inbound backlog.
CREATE INDEX jobs_queued_kind ON jobs (kind, seq) WHERE status = 'queued';
