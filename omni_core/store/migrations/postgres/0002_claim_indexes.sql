-- Partial indexes for claiming (see the SQLite twin), and notifications: replicas LISTEN on
-- omni_jobs to pick up new work within milliseconds, and on omni_cache to drop cached tenants
-- and instances another replica changed.
CREATE INDEX jobs_queued ON jobs (seq) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (lease_until) WHERE status = 'running';

CREATE FUNCTION omni_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('omni_jobs', '');
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION omni_notify_jobs();

CREATE FUNCTION omni_notify_cache() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('omni_cache', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION omni_notify_cache();
CREATE TRIGGER instances_notify AFTER INSERT OR UPDATE OR DELETE ON instances
    FOR EACH STATEMENT EXECUTE FUNCTION omni_notify_cache();
