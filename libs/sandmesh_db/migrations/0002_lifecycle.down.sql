DROP TABLE dead_letters;
ALTER TABLE executions DROP COLUMN executor_id;
ALTER TABLE executions DROP COLUMN job_seq;
ALTER TABLE executions DROP COLUMN request_hash;
