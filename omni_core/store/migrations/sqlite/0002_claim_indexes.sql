-- Claiming walks queued jobs in seq order and probes each one's lane; these partial indexes
-- keep both cheap however many finished jobs the table holds.
CREATE INDEX jobs_queued ON jobs (seq) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (lease_until) WHERE status = 'running';
