-- 50,000 pending single-task runs, as createRun writes them.
INSERT INTO bench_explain.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
SELECT gen_random_uuid(), 'bench_burn', 'v', 'pending', jsonb_build_object('i', g), now(), now() FROM generate_series(1, 50000) g;
INSERT INTO bench_explain.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status, attempt, max_attempts, input, available_at, created_at, updated_at)
SELECT gen_random_uuid(), id, workflow_name, 'a', 0, 'ready', 1, 1, input, now(), now(), now() FROM bench_explain.pipeline_executions;
INSERT INTO bench_explain.task_outbox (task_execution_id, attempt, workflow_name, available_at, created_at)
SELECT id, 1, workflow_name, now(), now() FROM bench_explain.task_executions;
INSERT INTO bench_explain.execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
SELECT gen_random_uuid(), pipeline_execution_id, id, t, '{}', 'w', now() FROM bench_explain.task_executions, unnest(array['task_created','task_marked_ready']) t;
VACUUM ANALYZE bench_explain.pipeline_executions; VACUUM ANALYZE bench_explain.task_executions; VACUUM ANALYZE bench_explain.task_outbox; VACUUM ANALYZE bench_explain.execution_events;
\timing on
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH locked AS (
  SELECT id FROM bench_explain.task_outbox WHERE available_at <= now() AND workflow_name = ANY(array['bench_burn'])
  ORDER BY available_at, id LIMIT 100 FOR UPDATE SKIP LOCKED),
claimed AS (DELETE FROM bench_explain.task_outbox o USING locked WHERE o.id = locked.id RETURNING o.task_execution_id, o.attempt)
UPDATE bench_explain.task_executions t SET status = 'running', runner_id = 'r', started_at = now(), updated_at = now()
FROM claimed c WHERE t.id = c.task_execution_id AND t.status = 'ready' RETURNING c.attempt, t.id, t.input;
ROLLBACK;
-- the same claim after 25,000 outbox rows were claimed (deleted) and not yet vacuumed
DELETE FROM bench_explain.task_outbox WHERE id IN (SELECT id FROM bench_explain.task_outbox ORDER BY available_at, id LIMIT 25000);
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH locked AS (
  SELECT id FROM bench_explain.task_outbox WHERE available_at <= now() AND workflow_name = ANY(array['bench_burn'])
  ORDER BY available_at, id LIMIT 100 FOR UPDATE SKIP LOCKED),
claimed AS (DELETE FROM bench_explain.task_outbox o USING locked WHERE o.id = locked.id RETURNING o.task_execution_id, o.attempt)
UPDATE bench_explain.task_executions t SET status = 'running', runner_id = 'r', started_at = now(), updated_at = now()
FROM claimed c WHERE t.id = c.task_execution_id AND t.status = 'ready' RETURNING c.attempt, t.id, t.input;

-- 300 events (3 per claimed task), the claim's event batch
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
INSERT INTO bench_explain.execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
SELECT id, pid, tid, typ, data::jsonb, worker, created
FROM unnest((SELECT array_agg(gen_random_uuid()) FROM generate_series(1,300)), (SELECT array_agg(pipeline_execution_id) FROM (SELECT pipeline_execution_id FROM bench_explain.task_executions LIMIT 300) x),
            (SELECT array_agg(id) FROM (SELECT id FROM bench_explain.task_executions LIMIT 300) y), array_fill('task_claimed'::text, array[300]),
            array_fill('{"attempt":1}'::text, array[300]), array_fill('w'::text, array[300]), array_fill(now(), array[300]))
  WITH ORDINALITY AS e(id, pid, tid, typ, data, worker, created, ord) ORDER BY ord;
-- the completion's pipeline lock and updates of 100 runs/tasks
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
SELECT id, status FROM bench_explain.pipeline_executions WHERE id = ANY(ARRAY(SELECT id FROM bench_explain.pipeline_executions LIMIT 100)) ORDER BY id FOR UPDATE;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
UPDATE bench_explain.pipeline_executions p SET status = 'completed', output = '{}'::jsonb, completed_at = now(), updated_at = now()
WHERE p.id = ANY(ARRAY(SELECT id FROM bench_explain.pipeline_executions LIMIT 100));
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
UPDATE bench_explain.task_executions t SET status = 'completed', output = '{"i":1}'::jsonb, completed_at = now(), updated_at = now()
WHERE t.id = ANY(ARRAY(SELECT id FROM bench_explain.task_executions LIMIT 100));
ROLLBACK;
-- The completion's fenced finish as TaskFinishMany sends it, for 100 of 100
-- Running tasks of one runner (plus 100 that ran earlier: dead entries in
-- the partial index until vacuum). With the unnest estimated at 10 rows
-- the planner picks task_executions_running_idx (runner_id) and, per
-- result, walks every Running row of the runner; then the same with an
-- index that also holds id.
UPDATE bench_explain.task_executions SET status = 'running', runner_id = 'r'
WHERE id IN (SELECT id FROM bench_explain.task_executions ORDER BY id LIMIT 200);
UPDATE bench_explain.task_executions SET status = 'completed'
WHERE id IN (SELECT id FROM bench_explain.task_executions ORDER BY id LIMIT 100);
ANALYZE bench_explain.task_executions;
SELECT array_agg(id ORDER BY id) AS running_ids FROM bench_explain.task_executions WHERE status = 'running' \gset
PREPARE finish(uuid[], text[], text[], text[], int[], timestamptz[], timestamptz[], text[], int[], int[]) AS
UPDATE bench_explain.task_executions t
SET status = f.status, output = COALESCE(f.output::jsonb, t.output), error = f.error, attempt = f.attempt,
	available_at = f.available_at,
	completed_at = CASE WHEN f.status IN ('completed', 'failed', 'skipped') THEN f.now ELSE t.completed_at END,
	runner_id = CASE WHEN f.status = 'ready' THEN '' ELSE t.runner_id END,
	updated_at = f.now
FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
	AS f(id, status, output, error, attempt, available_at, now, runner_id, fence_attempt, fence_recovery)
WHERE t.id = f.id AND t.status = 'running' AND t.runner_id = f.runner_id
	AND t.attempt = f.fence_attempt AND t.recovery_count = f.fence_recovery
RETURNING t.id;
\echo 'fenced finish of 100 tasks, schema as migrated:'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE finish(
	:'running_ids'::uuid[], array_fill('completed'::text, ARRAY[100]),
	array_fill('{"i":1}'::text, ARRAY[100]), array_fill(''::text, ARRAY[100]), array_fill(1, ARRAY[100]),
	array_fill(NULL::timestamptz, ARRAY[100]), array_fill(now(), ARRAY[100]), array_fill('r'::text, ARRAY[100]),
	array_fill(1, ARRAY[100]), array_fill(0, ARRAY[100]));
ROLLBACK;
CREATE INDEX task_executions_running_id_idx ON bench_explain.task_executions (runner_id, id) WHERE status = 'running';
DROP INDEX bench_explain.task_executions_running_idx;
ANALYZE bench_explain.task_executions;
DEALLOCATE finish;
PREPARE finish(uuid[], text[], text[], text[], int[], timestamptz[], timestamptz[], text[], int[], int[]) AS
UPDATE bench_explain.task_executions t
SET status = f.status, output = COALESCE(f.output::jsonb, t.output), error = f.error, attempt = f.attempt,
	available_at = f.available_at,
	completed_at = CASE WHEN f.status IN ('completed', 'failed', 'skipped') THEN f.now ELSE t.completed_at END,
	runner_id = CASE WHEN f.status = 'ready' THEN '' ELSE t.runner_id END,
	updated_at = f.now
FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
	AS f(id, status, output, error, attempt, available_at, now, runner_id, fence_attempt, fence_recovery)
WHERE t.id = f.id AND t.status = 'running' AND t.runner_id = f.runner_id
	AND t.attempt = f.fence_attempt AND t.recovery_count = f.fence_recovery
RETURNING t.id;
\echo 'the same with the running index on (runner_id, id):'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE finish(
	:'running_ids'::uuid[], array_fill('completed'::text, ARRAY[100]),
	array_fill('{"i":1}'::text, ARRAY[100]), array_fill(''::text, ARRAY[100]), array_fill(1, ARRAY[100]),
	array_fill(NULL::timestamptz, ARRAY[100]), array_fill(now(), ARRAY[100]), array_fill('r'::text, ARRAY[100]),
	array_fill(1, ARRAY[100]), array_fill(0, ARRAY[100]));
ROLLBACK;
SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = 'bench_explain';
CREATE TABLE bench_explain.ev_plain (LIKE bench_explain.execution_events INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE bench_explain.ev_plain ADD PRIMARY KEY (sequence_num);
CREATE TABLE bench_explain.ev_full (LIKE bench_explain.execution_events INCLUDING ALL);
\echo 'events, primary key only:'
INSERT INTO bench_explain.ev_plain (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'task_completed', '{"attempt":1,"duration_ms":0}', 'w', now() FROM generate_series(1,100000);
\echo 'events, all five indexes:'
INSERT INTO bench_explain.ev_full (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'task_completed', '{"attempt":1,"duration_ms":0}', 'w', now() FROM generate_series(1,100000);
\echo 'again, primary key only:'
INSERT INTO bench_explain.ev_plain (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'task_completed', '{"attempt":1,"duration_ms":0}', 'w', now() FROM generate_series(1,100000);
\echo 'again, all five indexes:'
INSERT INTO bench_explain.ev_full (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'task_completed', '{"attempt":1,"duration_ms":0}', 'w', now() FROM generate_series(1,100000);
\timing off
DROP SCHEMA bench_explain CASCADE;
