package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cloacina-go/cloacina/driver"
)

// dbtx is what *pgxpool.Pool and pgx.Tx have in common.
type dbtx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

type executor struct {
	db dbtx
	q  *queries
}

const pipelineColumns = `id, workflow_name, workflow_version, status, input, output, error, created_at, started_at, completed_at, updated_at,
	parent_pipeline_execution_id, parent_task_execution_id`

const taskColumnsFmt = `%[1]sid, %[1]spipeline_execution_id, %[1]sworkflow_name, %[1]stask_name, %[1]sposition, %[1]sstatus,
	%[1]sattempt, %[1]smax_attempts, %[2]s, %[1]serror, %[1]srunner_id, %[1]srecovery_count, %[1]ssub_status, %[1]savailable_at,
	%[1]screated_at, %[1]sstarted_at, %[1]scompleted_at, %[1]supdated_at, COALESCE(%[1]sopen_deps, 0) AS open_deps`

func taskColumns(prefix string, withContexts bool) string {
	ctxCols := "NULL::json, NULL::json"
	if withContexts {
		ctxCols = prefix + "input, " + prefix + "output"
	}
	return fmt.Sprintf(taskColumnsFmt, prefix, ctxCols)
}

// taskFinishListSQL finishes tasks and reads back every task of the runs
// $12, with their contexts or without.
func taskFinishListSQL(withContexts bool) string {
	return `WITH fin AS (` + strings.Replace(finishSQL, "RETURNING t.id", "RETURNING "+taskColumns("t.", withContexts), 1) + `)
			SELECT * FROM (
				SELECT true AS finished, fin.* FROM fin
				UNION ALL
				SELECT false, ` + taskColumns("t.", withContexts) + ` FROM {s}.task_executions t
				WHERE t.pipeline_execution_id = ANY($12) AND t.id NOT IN (SELECT id FROM fin)
			) x ORDER BY pipeline_execution_id, position`
}

// finishSQL applies fenced task transitions ($1–$11 are parallel arrays).
const finishSQL = `UPDATE {s}.task_executions t
			SET status = f.status, output = COALESCE(f.output::json, t.output), error = f.error, attempt = f.attempt,
				available_at = f.available_at,
				completed_at = CASE WHEN f.status IN ('completed', 'failed', 'skipped') THEN f.now ELSE t.completed_at END,
				runner_id = CASE WHEN f.status = 'ready' THEN '' ELSE t.runner_id END,
				recovery_count = f.recovery, sub_status = '', updated_at = f.now
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], $7::timestamptz[],
				$8::text[], $9::int[], $10::int[], $11::int[])
				AS f(id, status, output, error, attempt, available_at, now, runner_id, fence_attempt, fence_recovery, recovery)
			WHERE t.id = f.id AND t.status = 'running' AND t.runner_id = f.runner_id
				AND t.attempt = f.fence_attempt AND t.recovery_count = f.fence_recovery
			RETURNING t.id`

// pipelineInsertSQL creates runs from parallel arrays ($1–$8), skipping
// those that exist; a run created Running starts at its creation.
const pipelineInsertSQL = `INSERT INTO {s}.pipeline_executions
			(id, workflow_name, workflow_version, status, input, started_at, created_at, updated_at,
				parent_pipeline_execution_id, parent_task_execution_id)
			SELECT id, wf, version, status, input::json, CASE WHEN status = 'running' THEN now END, now, now, parent, parent_task
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::uuid[], $8::uuid[])
				AS u(id, wf, version, status, input, now, parent, parent_task)
			ON CONFLICT (id) DO NOTHING`

// claimSQL is the claim, its outbox rows narrowed by filter (a condition
// beginning with AND, or "").
func claimSQL(filter string) string {
	return `WITH locked AS (
				SELECT id FROM {s}.task_outbox
				WHERE available_at <= $1 AND workflow_name = ANY($2)` + filter + `
				ORDER BY available_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
			claimed AS (
				DELETE FROM {s}.task_outbox o USING locked WHERE o.id = locked.id
				RETURNING o.task_execution_id, o.attempt),
			tasks AS (
				UPDATE {s}.task_executions t SET status = 'running', runner_id = $4, started_at = $1, updated_at = $1
				FROM claimed c WHERE t.id = c.task_execution_id AND t.status = 'ready'
				RETURNING c.attempt AS outbox_attempt, ` + taskColumns("t.", true) + `),
			pending AS (
				SELECT p.id FROM {s}.pipeline_executions p
				WHERE p.id IN (SELECT pipeline_execution_id FROM tasks) AND p.status = 'pending'
				ORDER BY p.id FOR UPDATE SKIP LOCKED),
			started AS (
				UPDATE {s}.pipeline_executions p SET status = 'running', started_at = $1, updated_at = $1
				FROM pending WHERE p.id = pending.id RETURNING p.id, p.workflow_version)
			SELECT tasks.outbox_attempt, ` + taskColumns("tasks.", true) + `,
				-- The version of a run started here; NULL otherwise.
				(SELECT started.workflow_version FROM started WHERE started.id = tasks.pipeline_execution_id),
				-- Pending but not started: pending skipped its locked row.
				NOT EXISTS (SELECT 1 FROM started WHERE started.id = tasks.pipeline_execution_id)
					AND EXISTS (SELECT 1 FROM {s}.pipeline_executions p
						WHERE p.id = tasks.pipeline_execution_id AND p.status = 'pending')
			FROM tasks`
}

// queries holds the statements whose text depends on the schema, rendered
// once per backend.
type queries struct {
	schema             string // quoted
	pipelineInsertMany string
	pipelineInsertNew  string
	pipelineGet        string
	pipelineLock       string
	pipelineLockNoWait string
	pipelineLockSkip   string
	taskInsert         string
	taskClaim          string
	taskClaimRuns      string
	taskFinish         string
	taskFinishList     string
	taskFinishListLean string // without contexts (ListStatusOnly)
	outboxPeek         string
	backlog            string
	outboxDelete       string
	taskUpdate         string
	outboxInsert       string
	pipelineUpdate     string
	eventInsert        string
	notify             string
	channel            string
	eventDelete        string
	eventDeleteEnded   string
	eventLastBefore    string
	eventSpan          string
	eventNotUnfinished string
	pipelineTable      string
	taskTable          string
	eventTable         string
}

func newQueries(schema string) *queries {
	s := pgx.Identifier{schema}.Sanitize()
	r := strings.NewReplacer("{s}", s)
	return &queries{
		schema:             s,
		pipelineTable:      s + ".pipeline_executions",
		taskTable:          s + ".task_executions",
		eventTable:         s + ".execution_events",
		pipelineInsertMany: r.Replace(pipelineInsertSQL + ` RETURNING id`),
		// A fresh start's runs cannot exist yet: one that does fails the
		// change set (ErrConflict) for the retry to see.
		pipelineInsertNew: r.Replace(`WITH i AS (` + pipelineInsertSQL + ` RETURNING 1)
			SELECT {s}.cloacina_expect_rows(count(*), $9, 'run') FROM i`),
		pipelineGet:  r.Replace(`SELECT ` + pipelineColumns + ` FROM {s}.pipeline_executions WHERE id = $1`),
		pipelineLock: r.Replace(`SELECT ` + pipelineColumns + ` FROM {s}.pipeline_executions WHERE id = ANY($1) ORDER BY id FOR UPDATE`),
		pipelineLockNoWait: r.Replace(`SELECT ` + pipelineColumns + ` FROM {s}.pipeline_executions WHERE id = ANY($1)
			ORDER BY id FOR UPDATE NOWAIT`),
		pipelineLockSkip: r.Replace(`SELECT ` + pipelineColumns + ` FROM {s}.pipeline_executions WHERE id = ANY($1)
			ORDER BY id FOR UPDATE SKIP LOCKED`),
		taskInsert: r.Replace(`INSERT INTO {s}.task_executions (id, pipeline_execution_id, workflow_name, task_name, position,
				status, attempt, max_attempts, input, error, available_at, runner_id, started_at, created_at, updated_at, open_deps)
			SELECT id, pid, wf, name, pos, status, attempt, max_attempts, input::json, error, available_at,
				runner, CASE WHEN status = 'running' THEN now END, now, now, NULLIF(open_deps, 0)
			FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::text[], $7::int[], $8::int[],
				$9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::text[], $14::int[])
				AS u(id, pid, wf, name, pos, status, attempt, max_attempts, input, error, available_at, now, runner, open_deps)`),
		taskClaim: r.Replace(claimSQL("")),
		taskClaimRuns: r.Replace(claimSQL(`
					AND task_execution_id IN (SELECT id FROM {s}.task_executions WHERE pipeline_execution_id = ANY($5))`)),
		taskFinish: r.Replace(finishSQL),

		taskFinishList:     r.Replace(taskFinishListSQL(true)),
		taskFinishListLean: r.Replace(taskFinishListSQL(false)),
		backlog:            r.Replace(backlogSQL),
		outboxPeek: r.Replace(`SELECT
			EXISTS (SELECT 1 FROM {s}.task_outbox WHERE available_at <= $1 AND workflow_name = ANY($2)),
			(SELECT MIN(available_at) FROM {s}.task_outbox WHERE available_at > $1 AND workflow_name = ANY($2))`),
		outboxDelete: r.Replace(`DELETE FROM {s}.task_outbox WHERE task_execution_id IN
			(SELECT id FROM {s}.task_executions WHERE pipeline_execution_id = $1)`),
		taskUpdate: r.Replace(`WITH u AS (UPDATE {s}.task_executions t
			SET status = u.status, attempt = u.attempt, input = COALESCE(u.input::json, t.input), error = u.error,
				available_at = u.available_at,
				completed_at = CASE WHEN u.status IN ('completed', 'failed', 'skipped') THEN u.now ELSE t.completed_at END,
				runner_id = CASE WHEN u.status = 'running' THEN u.runner_id ELSE t.runner_id END,
				started_at = CASE WHEN u.status = 'running' THEN u.now ELSE t.started_at END,
				updated_at = u.now, open_deps = NULLIF(u.open_deps, 0)
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[],
				$10::text[], $11::int[])
				AS u(id, from_status, status, attempt, input, error, available_at, now, runner_id, open_deps)
			WHERE t.id = u.id AND t.status = u.from_status RETURNING 1)
			SELECT {s}.cloacina_expect_rows(count(*), $9, 'task') FROM u`),
		outboxInsert: r.Replace(`INSERT INTO {s}.task_outbox (task_execution_id, attempt, workflow_name, available_at, created_at)
			SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[])`),
		pipelineUpdate: r.Replace(`WITH u AS (UPDATE {s}.pipeline_executions p
			SET status = u.status, output = COALESCE(u.output::json, p.output), error = u.error,
				started_at = COALESCE(p.started_at, u.started_at), completed_at = COALESCE(u.completed_at, p.completed_at),
				updated_at = u.now
			FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
				AS u(id, from_status, status, output, error, started_at, completed_at, now)
			WHERE p.id = u.id AND p.status = u.from_status RETURNING 1)
			SELECT {s}.cloacina_expect_rows(count(*), $9, 'run') FROM u`),
		// tx_id places the events in following order (migration 0003):
		// see eventTxID.
		eventInsert: r.Replace(`INSERT INTO {s}.execution_events
				(id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at, tx_id)
			SELECT id, pid, tid, typ, data::json, worker, created, (` + eventTxID + `)
			FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
				WITH ORDINALITY AS e(id, pid, tid, typ, data, worker, created, ord)
			ORDER BY ord`),
		// The channel's name is the schema's secret (migration 10).
		notify:  r.Replace(`SELECT pg_notify((SELECT name FROM {s}.cloacina_channel), p) FROM unnest($1::text[]) AS p`),
		channel: r.Replace(`SELECT name FROM {s}.cloacina_channel`),
		// A batch picks its events walking the primary key from where the
		// last one ended, then deletes them by key: "= ANY(ARRAY(…))"
		// rather than "IN (…)", which PostgreSQL, once statistics show
		// some hundred thousand events, joins by a scan of the whole table.
		eventDelete: r.Replace(`WITH d AS (DELETE FROM {s}.execution_events WHERE sequence_num = ANY(ARRAY(
			SELECT sequence_num FROM {s}.execution_events WHERE sequence_num > $4 AND sequence_num <= $3 AND created_at < $1
			ORDER BY sequence_num LIMIT $2)) RETURNING sequence_num)
			SELECT count(*), coalesce(max(sequence_num), 0) FROM d`),
		eventDeleteEnded: r.Replace(`WITH d AS (DELETE FROM {s}.execution_events WHERE sequence_num = ANY(ARRAY(
			SELECT sequence_num FROM {s}.execution_events e WHERE sequence_num > $4 AND sequence_num <= $3 AND created_at < $1 AND ` + notOfUnfinishedRun + `
			ORDER BY sequence_num LIMIT $2)) RETURNING sequence_num)
			SELECT count(*), coalesce(max(sequence_num), 0) FROM d`),
		// The maximum of the events before the cutoff, read through the
		// BRIN index (+ 0: a max of the key would walk it back from the
		// newest event, through every event after the cutoff — most of
		// the log, in retention's steady state).
		eventLastBefore: r.Replace(`SELECT coalesce(max(sequence_num + 0), 0) FROM {s}.execution_events WHERE created_at < $1`),
		// Where a time window lies among the numbers below $3
		// (driver.EventSpan): a binary search of the primary key for
		// each bound given, as if creation times grew with numbers. Each
		// step looks up the first event at or after the middle of the
		// range left: a few dozen index lookups, however long the log.
		eventSpan: r.Replace(`WITH RECURSIVE ends AS (
				SELECT min(sequence_num) AS first, max(sequence_num) AS last FROM {s}.execution_events WHERE sequence_num < $3),
			search(i, t, lo, hi) AS (
				SELECT b.i, b.t, ends.first, ends.last + 1 FROM ends, (VALUES (1, $1::timestamptz), (2, $2::timestamptz)) AS b(i, t)
				WHERE b.t IS NOT NULL
				UNION ALL
				SELECT i, t, CASE WHEN m.sequence_num < hi AND m.created_at < t THEN m.sequence_num + 1 ELSE lo END,
					CASE WHEN m.sequence_num IS NULL OR m.sequence_num >= hi THEN (lo + hi) / 2
						WHEN m.created_at < t THEN hi ELSE m.sequence_num END
				FROM search LEFT JOIN LATERAL (SELECT sequence_num, created_at FROM {s}.execution_events
					WHERE sequence_num >= (lo + hi) / 2 ORDER BY sequence_num LIMIT 1) m ON true
				WHERE lo < hi)
			SELECT first, last, (SELECT lo FROM search WHERE i = 1 AND lo >= hi), (SELECT lo FROM search WHERE i = 2 AND lo >= hi)
			FROM ends`),
		eventNotUnfinished: r.Replace(notOfUnfinishedRun),
	}
}

// eventTxID is the tx_id of the events an insert writes: the greater of
// the transaction's id and the newest transaction id that had ended when
// the insert's statement began. Following reads in (tx_id, sequence_num)
// order, only below the xmin of its snapshot (migration 0003), which
// needs tx_id at least the writer's id: any transaction still open, or
// still to begin, then writes a tx_id at least that of every event a
// follower has read, and sequence numbers break the tie. The id alone
// is taken when the transaction first writes or locks, and a transaction
// can wait after that for a run (or task) that another one, with a larger
// id, changes and commits: its own change of that run comes after, but
// its id, alone, would place its events before, and a follower would
// rebuild the run's status from the two in the wrong order. An insert
// comes after every lock its transaction waited for, so the other
// transaction had ended and its events' tx_id is at most this one.
const eventTxID = `SELECT greatest(pg_current_xact_id(),
				(pg_snapshot_xmax(pg_current_snapshot())::text::bigint - 1)::text::xid8)`

// notOfUnfinishedRun holds for an event (aliased e) unless its run is
// Pending, Running or Paused, or has a task still Running (a Cancelled run
// whose task has not returned: its outcome is still to be recorded); it
// holds for an event whose run row is gone. Few runs are unfinished and
// few tasks run, so PostgreSQL reads each set once per statement and
// hashes it for a hash anti join: no lookup per event. A deletion (in a
// transaction, so without sequential scans: txSettings) reads them through
// pipeline_executions_status_idx and the partial index of running tasks;
// a count may scan the tables instead while they are small or its cached
// plan was made when they were.
var notOfUnfinishedRun = fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM {s}.pipeline_executions p
				WHERE p.id = e.pipeline_execution_id AND p.status IN ('%s', '%s', '%s'))
			AND NOT EXISTS (SELECT 1 FROM {s}.task_executions rt
				WHERE rt.pipeline_execution_id = e.pipeline_execution_id AND rt.status = '%s')`,
	driver.PipelinePending, driver.PipelineRunning, driver.PipelinePaused, driver.TaskRunning)

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func collectPipelines(rows pgx.Rows, err error) ([]*driver.Pipeline, error) {
	if err != nil {
		return nil, mapError(err)
	}
	defer rows.Close()
	var out []*driver.Pipeline
	s := newPipelineScan()
	for rows.Next() {
		p, err := s.scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, mapError(rows.Err())
}

func (e *executor) PipelineInsertMany(ctx context.Context, ps []*driver.PipelineInsertParams) ([]uuid.UUID, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	n := len(ps)
	inserted, err := collectIDs(e.db.Query(ctx, e.q.pipelineInsertMany, pipelineInsertArgs(ps)...))
	if err != nil {
		if n == 1 {
			return nil, fmt.Errorf("postgres: insert pipeline %s: %w", ps[0].ID, mapError(err))
		}
		return nil, fmt.Errorf("postgres: insert %d pipelines: %w", n, mapError(err))
	}
	return inserted, nil
}

func pipelineInsertArgs(ps []*driver.PipelineInsertParams) []any {
	n := len(ps)
	ids := make(uuidArray, n)
	names, versions, statuses := make(textArray, n), make(textArray, n), make(textArray, n)
	nows := make(timeArray, n)
	parents, parentTasks := make(uuidArray, n), make(uuidArray, n)
	for i, p := range ps {
		ids[i], names[i], versions[i], statuses[i] = pgID(p.ID), pgText(p.WorkflowName), pgText(p.WorkflowVersion), pgText(string(p.Status))
		nows[i] = pgTime(p.Now)
		parents[i], parentTasks[i] = pgOptID(p.ParentPipelineID), pgOptID(p.ParentTaskID)
	}
	// A nil input is sent as the empty string, as string(nil) was.
	inputs := jsonArray(n, func(i int) json.RawMessage { return ps[i].Input }, "")
	for i := range inputs {
		inputs[i].Valid = true
	}
	return []any{ids, names, versions, statuses, inputs, nows, parents, parentTasks}
}

func (e *executor) PipelineGet(ctx context.Context, id uuid.UUID) (*driver.Pipeline, error) {
	p, err := newPipelineScan().scan(e.db.QueryRow(ctx, e.q.pipelineGet, pgID(id)))
	if err != nil {
		return nil, fmt.Errorf("postgres: get pipeline %s: %w", id, err)
	}
	return p, nil
}

// args numbers positional parameters as they are added.
type args []any

func (a *args) add(v any) string {
	*a = append(*a, v)
	return fmt.Sprintf("$%d", len(*a))
}

func (e *executor) PipelineList(ctx context.Context, p *driver.PipelineListParams) ([]*driver.Pipeline, error) {
	var where []string
	var a args
	if len(p.IDs) > 0 {
		where = append(where, "id = ANY("+a.add(pgIDs(p.IDs))+")")
	}
	if len(p.Statuses) > 0 {
		where = append(where, "status = ANY("+a.add(textsOf(p.Statuses))+")")
	}
	if p.WorkflowName != "" {
		where = append(where, "workflow_name = "+a.add(p.WorkflowName))
	}
	if len(p.ParentPipelineIDs) > 0 {
		// IS NOT NULL is implied, but spelled out it makes the planner
		// count only runs with a parent: a generic plan, guessing that
		// = ANY($n) keeps a tenth of all runs, walked every run newest
		// first instead of using the partial index on parents.
		where = append(where, "parent_pipeline_execution_id IS NOT NULL AND parent_pipeline_execution_id = ANY("+a.add(pgIDs(p.ParentPipelineIDs))+")")
	}
	if p.CreatedBefore != nil {
		where = append(where, "(created_at, id) < ("+a.add(driver.ClampTime(*p.CreatedBefore))+", "+a.add(pgID(p.BeforeID))+")")
	}
	if p.CreatedSince != nil {
		where = append(where, "created_at >= "+a.add(driver.ClampTime(*p.CreatedSince)))
	}
	if p.CreatedUntil != nil {
		where = append(where, "created_at < "+a.add(driver.ClampTime(*p.CreatedUntil)))
	}
	q := `SELECT ` + pipelineColumns + ` FROM ` + e.q.pipelineTable
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at DESC, id DESC"
	if p.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", p.Limit)
	}
	out, err := collectPipelines(e.db.Query(ctx, q, a...))
	if err != nil {
		return nil, fmt.Errorf("postgres: list pipelines: %w", err)
	}
	return out, nil
}

func (e *executor) PipelineLock(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out, err := collectPipelines(e.db.Query(ctx, e.q.pipelineLock, pgIDs(ids)))
	if err != nil {
		return nil, fmt.Errorf("postgres: lock pipelines: %w", err)
	}
	return out, nil
}

func (e *executor) PipelineLockNoWait(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out, err := collectPipelines(e.db.Query(ctx, e.q.pipelineLockNoWait, pgIDs(ids)))
	if err != nil {
		return nil, fmt.Errorf("postgres: lock pipelines without waiting: %w", err)
	}
	return out, nil
}

func (e *executor) PipelineLockSkipLocked(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out, err := collectPipelines(e.db.Query(ctx, e.q.pipelineLockSkip, pgIDs(ids)))
	if err != nil {
		return nil, fmt.Errorf("postgres: lock pipelines not held elsewhere: %w", err)
	}
	return out, nil
}

func (e *executor) TaskInsertMany(ctx context.Context, tasks []driver.TaskInsert) error {
	if len(tasks) == 0 {
		return nil
	}
	if _, err := e.db.Exec(ctx, e.q.taskInsert, taskInsertArgs(tasks)...); err != nil {
		return fmt.Errorf("postgres: insert tasks: %w", mapError(err))
	}
	return nil
}

func taskInsertArgs(tasks []driver.TaskInsert) []any {
	n := len(tasks)
	var (
		ids, pids            = make(uuidArray, n), make(uuidArray, n)
		wfs, names, statuses = make(textArray, n), make(textArray, n), make(textArray, n)
		pos, attempts, maxes = make(int4Array, n), make(int4Array, n), make(int4Array, n)
		errs, runners        = make(textArray, n), make(textArray, n)
		available, nows      = make(timeArray, n), make(timeArray, n)
		open                 = make(int4Array, n)
	)
	for i, t := range tasks {
		ids[i], pids[i], wfs[i], names[i], statuses[i] = pgID(t.ID), pgID(t.PipelineID), pgText(t.WorkflowName), pgText(t.Name), pgText(string(t.Status))
		pos[i], attempts[i], maxes[i] = pgInt4(t.Position), pgInt4(t.Attempt), pgInt4(t.MaxAttempts)
		errs[i], available[i], nows[i] = pgText(t.Error), pgTimePtr(t.AvailableAt), pgTime(t.Now)
		runners[i], open[i] = pgText(t.RunnerID), pgInt4(t.OpenDeps)
	}
	inputs := jsonArray(n, func(i int) json.RawMessage { return tasks[i].Input }, "")
	return []any{ids, pids, wfs, names, pos, statuses, attempts, maxes, inputs, errs, available, nows, runners, open}
}

func (e *executor) TaskList(ctx context.Context, p *driver.TaskListParams) ([]*driver.Task, error) {
	var where []string
	var a args
	if len(p.PipelineIDs) > 0 {
		where = append(where, "pipeline_execution_id = ANY("+a.add(pgIDs(p.PipelineIDs))+")")
	}
	if len(p.IDs) > 0 {
		where = append(where, "id = ANY("+a.add(pgIDs(p.IDs))+")")
	}
	if len(p.Names) > 0 {
		where = append(where, "task_name = ANY("+a.add(p.Names)+")")
	}
	if len(where) == 0 || len(p.Names) > 0 && len(p.PipelineIDs) == 0 {
		return nil, fmt.Errorf("postgres: list tasks: give pipeline ids or task ids")
	}
	q := `SELECT ` + taskColumns("", p.WithContexts) + ` FROM ` + e.q.taskTable + ` WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY pipeline_execution_id, position`
	rows, err := e.db.Query(ctx, q, a...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list tasks: %w", mapError(err))
	}
	defer rows.Close()
	var out []*driver.Task
	s := newTaskScan(nil)
	for rows.Next() {
		t, err := s.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list tasks: %w", err)
		}
		out = append(out, t)
	}
	return out, mapError(rows.Err())
}

func (e *executor) TaskClaim(ctx context.Context, p *driver.TaskClaimParams) (*driver.TaskClaimResult, error) {
	res := &driver.TaskClaimResult{}
	if len(p.Workflows) == 0 || p.Limit <= 0 {
		return res, nil
	}
	args := []any{p.Now.UTC(), textsOf(p.Workflows), p.Limit, p.RunnerID}
	query := e.q.taskClaim
	if len(p.RunIDs) > 0 {
		query = e.q.taskClaimRuns
		args = append(args, pgIDs(p.RunIDs))
	}
	rows, err := e.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: claim tasks: %w", mapError(err))
	}
	defer rows.Close()
	started, unstarted := map[uuid.UUID]bool{}, map[uuid.UUID]bool{}
	var outboxAttempt int
	var startedVersion *string
	var runUnstarted bool
	s := newTaskScan([]any{&outboxAttempt}, &startedVersion, &runUnstarted)
	for rows.Next() {
		t, err := s.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: claim tasks: %w", err)
		}
		if outboxAttempt != t.Attempt {
			return nil, fmt.Errorf("postgres: claim task %s: outbox attempt %d does not match task attempt %d", t.ID, outboxAttempt, t.Attempt)
		}
		if startedVersion != nil && !started[t.PipelineID] {
			started[t.PipelineID] = true
			res.Started = append(res.Started, t.PipelineID)
			res.StartedVersions = append(res.StartedVersions, *startedVersion)
		}
		if runUnstarted && !unstarted[t.PipelineID] {
			unstarted[t.PipelineID] = true
			res.Unstarted = append(res.Unstarted, t.PipelineID)
		}
		res.Tasks = append(res.Tasks, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: claim tasks: %w", mapError(err))
	}
	return res, nil
}

func (e *executor) TaskFinishMany(ctx context.Context, p *driver.TaskFinishParams) (*driver.TaskFinishResult, error) {
	res := &driver.TaskFinishResult{}
	n := len(p.Finishes)
	list := len(p.ListPipelineIDs) > 0
	if n == 0 && !list && len(p.LockPipelineIDs) == 0 {
		return res, nil
	}
	var (
		ids                     = make(uuidArray, n)
		statuses, errs, runners = make(textArray, n), make(textArray, n), make(textArray, n)
		attempts, fa, fr        = make(int4Array, n), make(int4Array, n), make(int4Array, n)
		recoveries              = make(int4Array, n)
		available, nows         = make(timeArray, n), make(timeArray, n)
	)
	for i := range p.Finishes {
		f := &p.Finishes[i]
		ids[i], statuses[i], errs[i] = pgID(f.Fence.TaskID), pgText(string(f.Status)), pgText(f.Error)
		attempts[i], available[i], nows[i] = pgInt4(f.Attempt), pgTimePtr(f.AvailableAt), pgTime(f.Now)
		runners[i], fa[i], fr[i] = pgText(f.Fence.RunnerID), pgInt4(f.Fence.Attempt), pgInt4(f.Fence.RecoveryCount)
		recoveries[i] = pgInt4(f.RecoveryCount)
	}
	outputs := jsonArray(n, func(i int) json.RawMessage { return p.Finishes[i].Output }, "")
	args := []any{ids, statuses, outputs, errs, attempts, available, nows, runners, fa, fr, recoveries}
	// The lock, the finish and the read-back travel in one round trip; the
	// server runs them in order.
	b := &pgx.Batch{}
	if len(p.LockPipelineIDs) > 0 {
		b.Queue(e.q.pipelineLock, pgIDs(p.LockPipelineIDs))
	}
	switch {
	case list:
		// One statement finishes and reads back: the rows it updated come
		// from RETURNING (the table scan would see them as they were
		// before).
		q := e.q.taskFinishList
		if p.ListStatusOnly {
			q = e.q.taskFinishListLean
		}
		b.Queue(q, append(args, pgIDs(p.ListPipelineIDs))...)
	case n > 0:
		b.Queue(e.q.taskFinish, args...)
	}
	br := e.db.SendBatch(ctx, b)
	defer br.Close()
	if len(p.LockPipelineIDs) > 0 {
		pipes, err := collectPipelines(br.Query())
		if err != nil {
			return nil, fmt.Errorf("postgres: lock pipelines: %w", err)
		}
		res.Pipelines = pipes
	}
	if !list {
		if n > 0 {
			done, err := collectIDs(br.Query())
			if err != nil {
				return nil, fmt.Errorf("postgres: finish tasks: %w", mapError(err))
			}
			res.Finished = done
		}
		return res, finishErr(br.Close())
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("postgres: finish tasks: %w", mapError(err))
	}
	defer rows.Close()
	var finished bool
	s := newTaskScan([]any{&finished})
	for rows.Next() {
		t, err := s.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: finish tasks: %w", err)
		}
		if finished {
			res.Finished = append(res.Finished, t.ID)
		}
		res.Tasks = append(res.Tasks, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: finish tasks: %w", mapError(err))
	}
	rows.Close()
	return res, finishErr(br.Close())
}

func finishErr(err error) error {
	if err != nil {
		return fmt.Errorf("postgres: finish tasks: %w", mapError(err))
	}
	return nil
}

func (e *executor) OutboxPeek(ctx context.Context, p *driver.OutboxPeekParams) (*driver.OutboxPeekResult, error) {
	if len(p.Workflows) == 0 {
		return &driver.OutboxPeekResult{}, nil
	}
	var res driver.OutboxPeekResult
	if err := e.db.QueryRow(ctx, e.q.outboxPeek, p.Now.UTC(), p.Workflows).Scan(&res.Claimable, &res.NextAvailableAt); err != nil {
		return nil, fmt.Errorf("postgres: peek outbox: %w", mapError(err))
	}
	res.NextAvailableAt = utcPtr(res.NextAvailableAt)
	return &res, nil
}

func (e *executor) OutboxDelete(ctx context.Context, p *driver.OutboxDeleteParams) (int, error) {
	tag, err := e.db.Exec(ctx, e.q.outboxDelete, pgID(p.PipelineID))
	if err != nil {
		return 0, fmt.Errorf("postgres: delete outbox rows of pipeline %s: %w", p.PipelineID, mapError(err))
	}
	return int(tag.RowsAffected()), nil
}

// ChangeSetApply sends every statement of the change set in one batch: one
// round trip however many rows it writes.
func (e *executor) ChangeSetApply(ctx context.Context, c *driver.ChangeSet) error {
	b := &pgx.Batch{}
	if n := len(c.NewPipelines); n > 0 {
		b.Queue(e.q.pipelineInsertNew, append(pipelineInsertArgs(c.NewPipelines), n)...)
	}
	if len(c.NewTasks) > 0 {
		b.Queue(e.q.taskInsert, taskInsertArgs(c.NewTasks)...)
	}
	if n := len(c.Tasks); n > 0 {
		var (
			ids                  = make(uuidArray, n)
			from, statuses, errs = make(textArray, n), make(textArray, n), make(textArray, n)
			attempts             = make(int4Array, n)
			available, nows      = make(timeArray, n), make(timeArray, n)
			runners              = make(textArray, n)
			open                 = make(int4Array, n)
		)
		for i := range c.Tasks {
			u := &c.Tasks[i]
			ids[i], from[i], statuses[i], attempts[i] = pgID(u.ID), pgText(string(u.FromStatus)), pgText(string(u.Status)), pgInt4(u.Attempt)
			errs[i], available[i], nows[i] = pgText(u.Error), pgTimePtr(u.AvailableAt), pgTime(u.Now)
			runners[i], open[i] = pgText(u.RunnerID), pgInt4(u.OpenDeps)
		}
		inputs := jsonArray(n, func(i int) json.RawMessage { return c.Tasks[i].Input }, "")
		b.Queue(e.q.taskUpdate, ids, from, statuses, attempts, inputs, errs, available, nows, n, runners, open)
	}
	if n := len(c.Outbox); n > 0 {
		var (
			ids             = make(uuidArray, n)
			attempts        = make(int4Array, n)
			wfs             = make(textArray, n)
			available, nows = make(timeArray, n), make(timeArray, n)
		)
		for i := range c.Outbox {
			o := &c.Outbox[i]
			ids[i], attempts[i], wfs[i], available[i], nows[i] = pgID(o.TaskID), pgInt4(o.Attempt), pgText(o.WorkflowName), pgTime(o.AvailableAt), pgTime(o.Now)
		}
		b.Queue(e.q.outboxInsert, ids, attempts, wfs, available, nows)
	}
	if n := len(c.Pipelines); n > 0 {
		var (
			ids                      = make(uuidArray, n)
			from, statuses, errs     = make(textArray, n), make(textArray, n), make(textArray, n)
			started, completed, nows = make(timeArray, n), make(timeArray, n), make(timeArray, n)
		)
		for i := range c.Pipelines {
			u := &c.Pipelines[i]
			ids[i], from[i], statuses[i], errs[i] = pgID(u.ID), pgText(string(u.FromStatus)), pgText(string(u.Status)), pgText(u.Error)
			started[i], completed[i], nows[i] = pgTimePtr(u.StartedAt), pgTimePtr(u.CompletedAt), pgTime(u.Now)
		}
		outputs := jsonArray(n, func(i int) json.RawMessage { return c.Pipelines[i].Output }, "")
		b.Queue(e.q.pipelineUpdate, ids, from, statuses, outputs, errs, started, completed, nows, n)
	}
	if n := len(c.Events); n > 0 {
		var (
			ids, pids, tids = make(uuidArray, n), make(uuidArray, n), make(uuidArray, n)
			types, workers  = make(textArray, n), make(textArray, n)
			created         = make(timeArray, n)
		)
		for i := range c.Events {
			ev := &c.Events[i]
			ids[i], pids[i], types[i], workers[i], created[i] = pgID(ev.ID), pgID(ev.PipelineID), pgText(string(ev.Type)), pgText(ev.WorkerID), pgTime(ev.CreatedAt)
			if ev.TaskID != nil {
				tids[i] = pgID(*ev.TaskID)
			}
		}
		data := jsonArray(n, func(i int) json.RawMessage { return c.Events[i].Data }, "{}")
		b.Queue(e.q.eventInsert, ids, pids, tids, types, data, workers, created)
	}
	tx, inTx := e.db.(*pgTx)
	if len(c.Notify) > 0 {
		if inTx && tx.bounded {
			// A notification takes a lock at COMMIT that every notifying
			// commit of the database shares: the bound is for row locks,
			// and a busy server's commit queue must not fail the writes.
			b.Queue("SELECT set_config('lock_timeout', '0', true)")
			tx.bounded = false
		}
		b.Queue(e.q.notify, textsOf(dedupe(c.Notify)))
	}
	if b.Len() == 0 {
		return nil
	}
	if inTx {
		// Sent with COMMIT: one round trip for every write and the commit.
		tx.deferBatch(b)
		return nil
	}
	if err := e.db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("postgres: apply changes: %w", mapError(err))
	}
	return nil
}

func dedupe(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func (e *executor) EventList(ctx context.Context, p *driver.EventListParams) ([]*driver.Event, error) {
	var where []string
	var a args
	if p.PipelineID != nil {
		where = append(where, "e.pipeline_execution_id = "+a.add(pgID(*p.PipelineID)))
	}
	if p.TaskID != nil {
		where = append(where, "e.task_execution_id = "+a.add(pgID(*p.TaskID)))
	}
	if len(p.Types) > 0 {
		if len(p.Types) == 1 {
			// One type: the type index then yields events in sequence
			// order and a limit stops it early; with = ANY PostgreSQL
			// (before 17) reads every event of the type and sorts them.
			where = append(where, "e.event_type = "+a.add(string(p.Types[0])))
		} else {
			where = append(where, "e.event_type = ANY("+a.add(textsOf(p.Types))+")")
		}
		if f := driver.IndexedEventTypesFilter("e.event_type", p.Types); f != "" {
			// Implied already; spelled out it shows the planner that the
			// partial index on types (migration 12) serves, also in a
			// generic plan.
			where = append(where, f)
		}
	}
	var window []string // the time bounds, without the alias
	if p.CreatedFrom != nil {
		window = append(window, "created_at >= "+a.add(driver.ClampTime(*p.CreatedFrom)))
	}
	if p.CreatedBefore != nil {
		window = append(window, "created_at < "+a.add(driver.ClampTime(*p.CreatedBefore)))
	}
	for _, w := range window {
		where = append(where, "e."+w)
	}
	if p.BeforeSeq > 0 {
		where = append(where, "e.sequence_num < "+a.add(p.BeforeSeq))
	}
	with := ""
	if p.Windowed() {
		// The window's range is read through the BRIN index on
		// created_at, in the listing's snapshot. (+ 0: a min or max of
		// the key would walk the key.)
		span, err := e.eventSpan(ctx, p)
		if err != nil {
			return nil, err
		}
		if span.Bound(p.Newest, p.Limit) {
			with = `WITH w AS MATERIALIZED (SELECT min(sequence_num + 0) AS lo, max(sequence_num + 0) AS hi FROM ` +
				e.q.eventTable + ` WHERE ` + strings.Join(window, " AND ") + `) `
			where = append(where, "e.sequence_num >= (SELECT lo FROM w)", "e.sequence_num <= (SELECT hi FROM w)")
		}
	}
	order, desc := "e.sequence_num", "e.sequence_num DESC"
	if p.AfterSeq != 0 {
		// Following (migration 0003): transaction order, below the oldest
		// transaction still running, after the cursor: the event numbered
		// AfterSeq, else the start of the log. A cursor that names no
		// event (deleted by retention) cannot be placed: the events not
		// yet read may be numbered below or above it, so only the start
		// of the log is sure to skip none.
		seq, ev := a.add(p.AfterSeq), e.q.eventTable
		where = append(where, "e.tx_id < pg_snapshot_xmin(pg_current_snapshot())")
		if p.AfterTx != 0 {
			where = append(where, `(e.tx_id, e.sequence_num) > (`+a.add(strconv.FormatInt(p.AfterTx, 10))+`::text::xid8, `+seq+`::bigint)`)
		} else {
			// Two scalars, each computed once, not a record: compared
			// with a row of scalars, (tx_id, sequence_num) starts the
			// follow index scan at the cursor; compared with a record
			// it was a filter, and every read walked the log from its
			// start.
			cursor := `(SELECT tx_id FROM ` + ev + ` WHERE sequence_num = ` + seq + `)`
			where = append(where, `(e.tx_id, e.sequence_num) > (COALESCE(`+cursor+`, '0'::xid8),
				CASE WHEN `+cursor+` IS NULL THEN 0 ELSE `+seq+`::bigint END)`)
		}
		order, desc = "e.tx_id, e.sequence_num", "e.tx_id DESC, e.sequence_num DESC"
	}
	// A task's name comes from its row while it exists, then from the
	// copy run retention keeps on its events (migration 11). Each row is
	// looked up by id: a join let the planner hash the whole task table
	// for the events of one large run.
	q := with + `SELECT e.sequence_num, e.id, e.pipeline_execution_id, e.task_execution_id,
		COALESCE((SELECT t.task_name FROM ` + e.q.taskTable + ` t WHERE t.id = e.task_execution_id), e.task_name, ''),
		e.event_type, e.event_data, e.worker_id, e.created_at, e.tx_id::text::bigint
		FROM ` + e.q.eventTable + ` e`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if p.Newest {
		q += " ORDER BY " + desc
	} else {
		q += " ORDER BY " + order
	}
	if p.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", p.Limit)
	}
	rows, err := e.db.Query(ctx, q, a...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list events: %w", mapError(err))
	}
	defer rows.Close()
	var out []*driver.Event
	for rows.Next() {
		var ev driver.Event
		var typ string
		if err := rows.Scan(&ev.SequenceNum, scanID{&ev.ID}, scanID{&ev.PipelineID}, scanOptID{&ev.TaskID}, &ev.TaskName, &typ, (*[]byte)(&ev.Data), &ev.WorkerID, &ev.CreatedAt, &ev.TxID); err != nil {
			return nil, fmt.Errorf("postgres: list events: %w", mapError(err))
		}
		ev.Type = driver.EventType(typ)
		ev.CreatedAt = ev.CreatedAt.UTC()
		out = append(out, &ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list events: %w", mapError(err))
	}
	return out, nil
}

// eventSpan places p's time window among the sequence numbers of the
// events p may list (driver.EventSpan).
func (e *executor) eventSpan(ctx context.Context, p *driver.EventListParams) (driver.EventSpan, error) {
	var from, before any
	if p.CreatedFrom != nil {
		from = driver.ClampTime(*p.CreatedFrom)
	}
	if p.CreatedBefore != nil {
		before = driver.ClampTime(*p.CreatedBefore)
	}
	below := int64(math.MaxInt64)
	if p.BeforeSeq > 0 {
		below = p.BeforeSeq
	}
	var first, last, fromSeq, beforeSeq *int64
	if err := e.db.QueryRow(ctx, e.q.eventSpan, from, before, below).Scan(&first, &last, &fromSeq, &beforeSeq); err != nil {
		return driver.EventSpan{}, fmt.Errorf("postgres: list events: place the time window: %w", mapError(err))
	}
	if first == nil {
		return driver.EventSpan{First: 1}, nil // no event: Last < First
	}
	s := driver.EventSpan{First: *first, Last: *last, From: *first, Before: *last + 1}
	if fromSeq != nil {
		s.From = *fromSeq
	}
	if beforeSeq != nil {
		s.Before = *beforeSeq
	}
	return s, nil
}

func (e *executor) EventCount(ctx context.Context, p *driver.EventCountParams) (int64, error) {
	var where []string
	var a args
	if p.PipelineID != nil {
		where = append(where, "pipeline_execution_id = "+a.add(pgID(*p.PipelineID)))
	}
	if p.Before != nil {
		where = append(where, "created_at < "+a.add(driver.ClampTime(*p.Before)))
	}
	if p.ExcludeUnfinishedRuns {
		where = append(where, e.q.eventNotUnfinished)
	}
	q := "SELECT count(*) FROM " + e.q.eventTable + " e"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	var n int64
	if err := e.db.QueryRow(ctx, q, a...).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: count events: %w", mapError(err))
	}
	return n, nil
}

func (e *executor) EventLastBefore(ctx context.Context, t time.Time) (int64, error) {
	var seq int64
	if err := e.db.QueryRow(ctx, e.q.eventLastBefore, driver.ClampTime(t)).Scan(&seq); err != nil {
		return 0, fmt.Errorf("postgres: find the last event before %s: %w", t.UTC().Format(time.RFC3339Nano), mapError(err))
	}
	return seq, nil
}

func (e *executor) EventDelete(ctx context.Context, p *driver.EventDeleteParams) (*driver.EventDeleteResult, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("postgres: delete events: limit must be positive")
	}
	q := e.q.eventDelete
	if p.ExcludeUnfinishedRuns {
		q = e.q.eventDeleteEnded
	}
	upTo := p.UpTo
	if upTo <= 0 {
		upTo = math.MaxInt64
	}
	var res driver.EventDeleteResult
	if err := e.db.QueryRow(ctx, q, driver.ClampTime(p.Before), p.Limit, upTo, max(p.After, 0)).Scan(&res.Deleted, &res.Last); err != nil {
		return nil, fmt.Errorf("postgres: delete events: %w", mapError(err))
	}
	return &res, nil
}
