-- Indexes tuned for the hot path, in step with PostgreSQL's migration 4.
-- The running-task index becomes (runner_id, id), so a fenced finish finds
-- its row exactly; the type index is dropped (reads by type scan the log
-- newest-first and filter). SQLite keeps its created_at index: it has no
-- BRIN, and its single writer is not index-bound.
DROP INDEX task_executions_running_idx;
CREATE INDEX task_executions_running_idx ON task_executions (runner_id, id) WHERE status = 'running';
DROP INDEX execution_events_type_idx;
