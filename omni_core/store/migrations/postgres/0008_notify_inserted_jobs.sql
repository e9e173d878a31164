-- omni_jobs only when an INSERT on jobs stored rows. A statement trigger fires for every INSERT
-- statement, including one that inserts nothing; the single-statement job steps (finishing a
-- delivery with no status-event jobs, an ingest batch of duplicates) would otherwise wake every
-- replica's dispatcher for no work. The transition table holds the statement's new rows.
CREATE OR REPLACE FUNCTION omni_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted_jobs) THEN
        PERFORM pg_notify('omni_jobs', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER jobs_notify ON jobs;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs REFERENCING NEW TABLE AS inserted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION omni_notify_jobs();
