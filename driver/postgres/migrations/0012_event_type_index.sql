-- Events by type. Migration 4 dropped the index on
-- (event_type, sequence_num) to spare the event insert a btree, and reads
-- by type walk the log newest first and filter. That is quick for the
-- types every task writes (a few rows walked per match), and a walk of
-- the whole log for the others: on 2 M events, the 100 newest
-- task_failed took 0.7 s and a type the log does not hold (task_abandoned,
-- task_created) a scan of every row.
--
-- This partial index holds the types that are not written for every task
-- (failures, retries, cancels, pauses, skips, deferrals, recoveries) and
-- those the engine does not write: the event insert pays for it only on
-- those, and the hot path (pipeline_started, task_marked_ready,
-- task_created, task_claimed, task_started, task_completed,
-- pipeline_completed) not at
-- all. The list
-- is driver.IndexedEventTypes, which a read adds to its filter verbatim
-- when it asks only for such types, so the planner (PostgreSQL with a
-- generic plan, SQLite always) can use the index.
--
-- Building it reads the whole table once while holding off event inserts
-- (a few seconds per million events).
CREATE INDEX execution_events_type_idx ON {{schema}}.execution_events (event_type, sequence_num)
    WHERE event_type IN ('pipeline_failed', 'pipeline_cancelled', 'pipeline_paused', 'pipeline_resumed',
        'task_deferred', 'task_resumed', 'task_failed', 'task_retry_scheduled', 'task_skipped',
        'task_abandoned', 'task_reset');
