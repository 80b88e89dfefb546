-- Idempotency: the same key and the same request return the same execution for a day.
ALTER TABLE executions ADD COLUMN request_hash bytea;
-- Where the job sits in the JOBS stream, so a cancelled or expired job can be removed.
ALTER TABLE executions ADD COLUMN job_seq bigint;
-- Which executor reported RUNNING, so a dead executor's runs can be found.
ALTER TABLE executions ADD COLUMN executor_id text;

CREATE TABLE dead_letters (
    id uuid PRIMARY KEY,
    execution_id uuid NOT NULL REFERENCES executions (id),
    tenant text NOT NULL,
    reason text NOT NULL,
    last_error text NOT NULL DEFAULT '',
    deliveries integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    replay_execution_id uuid
);

CREATE UNIQUE INDEX dead_letters_execution ON dead_letters (execution_id);
CREATE INDEX dead_letters_tenant_created ON dead_letters (tenant, created_at DESC);
