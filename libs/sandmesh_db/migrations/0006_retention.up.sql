-- The sweeper deletes executions past their retention, oldest first.
CREATE INDEX executions_finished ON executions (finished_at) WHERE finished_at IS NOT NULL;
