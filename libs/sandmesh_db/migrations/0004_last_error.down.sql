ALTER TABLE executions DROP COLUMN last_error;
