-- Parent and child runs. A run started from inside a task (Execute,
-- ExecuteAsync or ExecuteTx with the task's context) records that task
-- and its run, so that runs form a tree: listings can show which run
-- started which, and cancelling a run cancels its unfinished descendants.
-- Both columns stay NULL for runs started otherwise. They are a record,
-- not a constraint: no foreign key, so that removing a run by hand does
-- not touch the rows of the runs it started.
ALTER TABLE {{schema}}.pipeline_executions
    ADD COLUMN parent_pipeline_execution_id uuid,
    ADD COLUMN parent_task_execution_id uuid;
-- The children of a run, newest first (listings page on created_at, id).
-- Partial: most runs have no parent and cost this index nothing.
CREATE INDEX pipeline_executions_parent_idx ON {{schema}}.pipeline_executions
    (parent_pipeline_execution_id, created_at, id) WHERE parent_pipeline_execution_id IS NOT NULL;

-- Migration 7 replaced the leader lease table by cloacina_lease_terms and
-- kept the old one for runners of the versions before it during a rolling
-- upgrade. Nothing reads or writes it since. A runner of such a version
-- renews its lease inside its heartbeat transaction, which fails once the
-- table is gone: stop those runners (or upgrade through a version at
-- migration 7) before a runner of this version migrates the schema.
DROP TABLE {{schema}}.cloacina_leases;
