CREATE TABLE executions (
    id uuid PRIMARY KEY,
    tenant text NOT NULL,
    session_id text,
    idempotency_key text,
    -- The sandmesh.execution.v1.ExecutionRequest as submitted.
    request bytea NOT NULL,
    language text NOT NULL,
    priority text NOT NULL,
    status text NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    -- The sandmesh.execution.v1.ExecutionResult once final.
    result bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    deadline timestamptz NOT NULL
);

CREATE INDEX executions_tenant_created ON executions (tenant, created_at DESC);
CREATE INDEX executions_open ON executions (status, created_at) WHERE status IN ('QUEUED', 'RUNNING');
CREATE UNIQUE INDEX executions_idempotency ON executions (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
