-- Crash safety: the runner registry (one heartbeated row per live runner),
-- named leases for leader election, and the sub-status of a running task
-- (deferred while it waits outside its concurrency slot).

CREATE TABLE cloacina_runners (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    workflows    TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);

CREATE TABLE cloacina_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

ALTER TABLE task_executions ADD COLUMN sub_status TEXT NOT NULL DEFAULT '';
