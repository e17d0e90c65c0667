-- Crash safety: the runner registry (one heartbeated row per live runner),
-- named leases for leader election, and the sub-status of a running task
-- (deferred while it waits outside its concurrency slot).

CREATE TABLE {{schema}}.cloacina_runners (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    workflows    jsonb NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);

CREATE TABLE {{schema}}.cloacina_leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

ALTER TABLE {{schema}}.task_executions ADD COLUMN sub_status text NOT NULL DEFAULT '';
