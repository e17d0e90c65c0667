-- Schedules: workflows started on a cron specification. A schedule's
-- definition comes from the runners that declare it (Config.Schedules);
-- its state (next tick, paused) lives here, so that any of those runners
-- can fire a tick and each tick fires once: the firing transaction locks
-- the schedule's row (FOR UPDATE SKIP LOCKED), creates the tick's run,
-- records the tick and moves next_fire_at on, all in one commit.
CREATE TABLE {{schema}}.cloacina_schedules (
    name            text PRIMARY KEY,
    workflow_name   text NOT NULL,
    cron            text NOT NULL,
    timezone        text NOT NULL,
    input           json NOT NULL,
    catch_up        text NOT NULL,
    max_lateness_us bigint NOT NULL DEFAULT 0,
    overlap         text NOT NULL DEFAULT 'allow',
    paused          boolean NOT NULL DEFAULT false,
    next_fire_at    timestamptz NOT NULL,
    last_tick_at    timestamptz,
    last_run_id     uuid,
    last_fired_at   timestamptz,
    fired           bigint NOT NULL DEFAULT 0,
    skipped         bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- One row per tick fired, or skipped (by the overlap policy: no run, and
-- the reason): the primary key is what makes a tick fire at most once,
-- whatever the runners do. Removing a run removes its tick's record;
-- removing a schedule removes its ticks' records, not their runs.
CREATE TABLE {{schema}}.cloacina_schedule_ticks (
    schedule_name         text NOT NULL REFERENCES {{schema}}.cloacina_schedules (name) ON DELETE CASCADE,
    tick_at               timestamptz NOT NULL,
    pipeline_execution_id uuid REFERENCES {{schema}}.pipeline_executions (id) ON DELETE CASCADE,
    skipped               text NOT NULL DEFAULT '',
    fired_at              timestamptz NOT NULL,
    PRIMARY KEY (schedule_name, tick_at)
);
CREATE INDEX cloacina_schedule_ticks_run_idx ON {{schema}}.cloacina_schedule_ticks (pipeline_execution_id)
    WHERE pipeline_execution_id IS NOT NULL;
