CREATE TABLE tenants (
    id text PRIMARY KEY,
    tier text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Only a hash of each key is kept; the key itself is shown once, when it is made.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    tenant text NOT NULL REFERENCES tenants (id),
    key_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    time timestamptz NOT NULL DEFAULT now(),
    tenant text NOT NULL,
    key_id uuid,
    method text NOT NULL,
    target_id text NOT NULL DEFAULT '',
    code text NOT NULL
);

CREATE INDEX audit_log_tenant_time ON audit_log (tenant, time DESC);

-- Token buckets shared by every gateway replica.
CREATE TABLE rate_buckets (
    key text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL
);
