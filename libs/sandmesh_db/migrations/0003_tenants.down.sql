DROP TABLE rate_buckets;
DROP TABLE audit_log;
DROP TABLE api_keys;
DROP TABLE tenants;
