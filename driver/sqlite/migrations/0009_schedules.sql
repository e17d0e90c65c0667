-- Schedules, as PostgreSQL's migration 9: a schedule's definition comes
-- from the runners that declare it, its state lives here, and the firing
-- transaction (on the single writer) creates a tick's run, records the
-- tick and moves next_fire_at on in one commit.
CREATE TABLE cloacina_schedules (
    name            TEXT PRIMARY KEY,
    workflow_name   TEXT NOT NULL,
    cron            TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    input           TEXT NOT NULL,
    catch_up        TEXT NOT NULL,
    max_lateness_us INTEGER NOT NULL DEFAULT 0,
    overlap         TEXT NOT NULL DEFAULT 'allow',
    paused          INTEGER NOT NULL DEFAULT 0,
    next_fire_at    TEXT NOT NULL,
    last_tick_at    TEXT,
    last_run_id     TEXT,
    last_fired_at   TEXT,
    fired           INTEGER NOT NULL DEFAULT 0,
    skipped         INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

-- One row per tick fired, or skipped by the overlap policy (no run, and
-- the reason); the primary key makes a tick fire at most once.
CREATE TABLE cloacina_schedule_ticks (
    schedule_name         TEXT NOT NULL REFERENCES cloacina_schedules (name) ON DELETE CASCADE,
    tick_at               TEXT NOT NULL,
    pipeline_execution_id TEXT REFERENCES pipeline_executions (id) ON DELETE CASCADE,
    skipped               TEXT NOT NULL DEFAULT '',
    fired_at              TEXT NOT NULL,
    PRIMARY KEY (schedule_name, tick_at)
);
CREATE INDEX cloacina_schedule_ticks_run_idx ON cloacina_schedule_ticks (pipeline_execution_id)
    WHERE pipeline_execution_id IS NOT NULL;
