-- jobs_queued (0002) has had no reader since claims take one kind at a time through
-- jobs_queued_kind (0004); it only cost an index write at every job insert and claim.
DROP INDEX IF EXISTS jobs_queued;
-- The deliveries listing reads the trace rows of a page of jobs (traces_for_jobs); without an
-- index on job_id that read scanned every trace row. Partial: ingest traces carry no job, so
-- webhooks pay nothing for it.
CREATE INDEX traces_job ON traces (job_id) WHERE job_id IS NOT NULL;
