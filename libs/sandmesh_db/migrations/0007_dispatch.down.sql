DROP INDEX executions_held;
ALTER TABLE executions DROP COLUMN dispatched_at;
