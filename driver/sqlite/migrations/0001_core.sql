-- Core schema: runs, tasks, the task outbox and the execution event log.
-- Timestamps are UTC text of one fixed width (2006-01-02T15:04:05.000000Z),
-- so text order is time order. Contexts and event data are JSON text.

CREATE TABLE pipeline_executions (
    id               TEXT PRIMARY KEY,
    workflow_name    TEXT NOT NULL,
    workflow_version TEXT NOT NULL,
    status           TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    completed_at     TEXT,
    updated_at       TEXT NOT NULL
);
CREATE INDEX pipeline_executions_created_idx ON pipeline_executions (created_at, id);
CREATE INDEX pipeline_executions_status_idx ON pipeline_executions (status, created_at, id);

CREATE TABLE task_executions (
    id                    TEXT PRIMARY KEY,
    pipeline_execution_id TEXT NOT NULL REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    workflow_name         TEXT NOT NULL,
    task_name             TEXT NOT NULL,
    position              INTEGER NOT NULL,
    status                TEXT NOT NULL,
    attempt               INTEGER NOT NULL DEFAULT 0,
    max_attempts          INTEGER NOT NULL,
    input                 TEXT,
    output                TEXT,
    error                 TEXT NOT NULL DEFAULT '',
    runner_id             TEXT NOT NULL DEFAULT '',
    recovery_count        INTEGER NOT NULL DEFAULT 0,
    available_at          TEXT,
    created_at            TEXT NOT NULL,
    started_at            TEXT,
    completed_at          TEXT,
    updated_at            TEXT NOT NULL,
    UNIQUE (pipeline_execution_id, task_name)
);
CREATE INDEX task_executions_running_idx ON task_executions (runner_id) WHERE status = 'running';

CREATE TABLE task_outbox (
    id                INTEGER PRIMARY KEY,
    task_execution_id TEXT NOT NULL REFERENCES task_executions (id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL,
    workflow_name     TEXT NOT NULL,
    available_at      TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    UNIQUE (task_execution_id, attempt)
);
CREATE INDEX task_outbox_available_idx ON task_outbox (available_at, id);

-- AUTOINCREMENT: sequence numbers are never reused, even after retention
-- deletes the newest rows.
CREATE TABLE execution_events (
    sequence_num          INTEGER PRIMARY KEY AUTOINCREMENT,
    id                    TEXT NOT NULL,
    pipeline_execution_id TEXT NOT NULL,
    task_execution_id     TEXT,
    event_type            TEXT NOT NULL,
    event_data            TEXT NOT NULL,
    worker_id             TEXT NOT NULL,
    created_at            TEXT NOT NULL
);
CREATE INDEX execution_events_pipeline_idx ON execution_events (pipeline_execution_id, sequence_num);
CREATE INDEX execution_events_task_idx ON execution_events (task_execution_id, sequence_num) WHERE task_execution_id IS NOT NULL;
CREATE INDEX execution_events_type_idx ON execution_events (event_type, sequence_num);
CREATE INDEX execution_events_created_idx ON execution_events (created_at);
