-- When the scheduler handed the job to the work queue; NULL while it waits for the tenant's
-- running cap. Rows from before the cap were all handed over at once.
ALTER TABLE executions ADD COLUMN dispatched_at timestamptz;
UPDATE executions SET dispatched_at = created_at;
CREATE INDEX executions_held ON executions (tenant, created_at)
    WHERE status = 'QUEUED' AND dispatched_at IS NULL;
