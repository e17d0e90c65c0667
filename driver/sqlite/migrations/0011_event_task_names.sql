-- The name of an event's task, kept for when the task is gone: run
-- retention copies each task's name into its run's events in the
-- transaction that deletes the task, and reads take the name from the
-- task row while it exists, else from the event (see PostgreSQL's
-- migration 11). Adding a nullable column with no default only changes
-- the schema: existing rows stay NULL.
ALTER TABLE execution_events ADD COLUMN task_name TEXT;
