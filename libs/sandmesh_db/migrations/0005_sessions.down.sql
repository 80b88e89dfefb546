DROP INDEX executions_session;
DROP TABLE sessions;
