-- The infrastructure failure of the latest attempt, kept for the dead-letter record.
ALTER TABLE executions ADD COLUMN last_error text NOT NULL DEFAULT '';
