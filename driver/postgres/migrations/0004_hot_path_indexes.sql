-- Indexes tuned for the hot path (issue 5, measured in BENCHMARKS.md).
--
-- A claim check by runner used task_executions_running_idx (runner_id only)
-- for the fenced finish, walking every running task of the runner for each
-- result: quadratic in a runner's concurrency. (runner_id, id) makes each
-- lookup exact, and still serves the sweep for a dead runner's tasks.
DROP INDEX {{schema}}.task_executions_running_idx;
CREATE INDEX task_executions_running_idx ON {{schema}}.task_executions (runner_id, id) WHERE status = 'running';

-- Every event row paid for two btrees that only serve rare reads. Reads by
-- type scan the log newest-first and filter (or a user adds an index of
-- their own); retention by age only needs ranges of created_at, which a
-- BRIN index gives almost for free on an append-only, time-ordered table.
DROP INDEX {{schema}}.execution_events_type_idx;
DROP INDEX {{schema}}.execution_events_created_idx;
CREATE INDEX execution_events_created_brin ON {{schema}}.execution_events USING brin (created_at);

-- The outbox is a queue: rows live for milliseconds. Vacuum it after a
-- fixed number of dead rows, not a fraction of its (tiny) size, so claims
-- do not walk dead index entries as a burn-down drains it.
ALTER TABLE {{schema}}.task_outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_limit = 2000);
