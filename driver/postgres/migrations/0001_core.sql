-- Core schema: runs, tasks, the task outbox and the execution event log.
-- {{schema}} is replaced by the quoted schema name: every statement names
-- its schema, so nothing depends on search_path.

CREATE TABLE {{schema}}.pipeline_executions (
    id               uuid PRIMARY KEY,
    workflow_name    text NOT NULL,
    workflow_version text NOT NULL,
    status           text NOT NULL,
    input            jsonb NOT NULL,
    output           jsonb,
    error            text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX pipeline_executions_created_idx ON {{schema}}.pipeline_executions (created_at, id);
CREATE INDEX pipeline_executions_status_idx ON {{schema}}.pipeline_executions (status, created_at, id);

CREATE TABLE {{schema}}.task_executions (
    id                    uuid PRIMARY KEY,
    pipeline_execution_id uuid NOT NULL REFERENCES {{schema}}.pipeline_executions (id) ON DELETE CASCADE,
    workflow_name         text NOT NULL,
    task_name             text NOT NULL,
    position              integer NOT NULL,
    status                text NOT NULL,
    attempt               integer NOT NULL DEFAULT 0,
    max_attempts          integer NOT NULL,
    input                 jsonb,
    output                jsonb,
    error                 text NOT NULL DEFAULT '',
    runner_id             text NOT NULL DEFAULT '',
    recovery_count        integer NOT NULL DEFAULT 0,
    available_at          timestamptz,
    created_at            timestamptz NOT NULL,
    started_at            timestamptz,
    completed_at          timestamptz,
    updated_at            timestamptz NOT NULL,
    UNIQUE (pipeline_execution_id, task_name)
);
CREATE INDEX task_executions_running_idx ON {{schema}}.task_executions (runner_id) WHERE status = 'running';

CREATE TABLE {{schema}}.task_outbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_execution_id uuid NOT NULL REFERENCES {{schema}}.task_executions (id) ON DELETE CASCADE,
    attempt           integer NOT NULL,
    workflow_name     text NOT NULL,
    available_at      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL,
    UNIQUE (task_execution_id, attempt)
);
CREATE INDEX task_outbox_available_idx ON {{schema}}.task_outbox (available_at, id);

CREATE TABLE {{schema}}.execution_events (
    sequence_num          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                    uuid NOT NULL,
    pipeline_execution_id uuid NOT NULL,
    task_execution_id     uuid,
    event_type            text NOT NULL,
    event_data            jsonb NOT NULL,
    worker_id             text NOT NULL,
    created_at            timestamptz NOT NULL
);
CREATE INDEX execution_events_pipeline_idx ON {{schema}}.execution_events (pipeline_execution_id, sequence_num);
CREATE INDEX execution_events_task_idx ON {{schema}}.execution_events (task_execution_id, sequence_num) WHERE task_execution_id IS NOT NULL;
CREATE INDEX execution_events_type_idx ON {{schema}}.execution_events (event_type, sequence_num);
CREATE INDEX execution_events_created_idx ON {{schema}}.execution_events (created_at);
