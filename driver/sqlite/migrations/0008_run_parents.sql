-- Parent and child runs, as PostgreSQL's migration 8: the run and task that
-- started a run from inside a task, NULL for runs started otherwise, and
-- an index to find the children of a run. No foreign key: the link is a
-- record, not a constraint.
ALTER TABLE pipeline_executions ADD COLUMN parent_pipeline_execution_id TEXT;
ALTER TABLE pipeline_executions ADD COLUMN parent_task_execution_id TEXT;
CREATE INDEX pipeline_executions_parent_idx ON pipeline_executions
    (parent_pipeline_execution_id, created_at, id) WHERE parent_pipeline_execution_id IS NOT NULL;

-- The old leader lease table, which migration 7 replaced by
-- cloacina_lease_terms and kept only for runners of earlier versions
-- during a rolling upgrade (see PostgreSQL's migration 8).
DROP TABLE cloacina_leases;
