DROP INDEX executions_finished;
