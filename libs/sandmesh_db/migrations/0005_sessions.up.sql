CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    tenant text NOT NULL,
    language text NOT NULL,
    source text NOT NULL,
    -- Bumped on every saved source; a write names the revision it replaces.
    revision bigint NOT NULL DEFAULT 1,
    closed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sessions_tenant ON sessions (tenant, created_at DESC);
CREATE INDEX executions_session ON executions (session_id, created_at DESC)
    WHERE session_id IS NOT NULL;
