package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// A connection keeps the plans of its prepared statements. Plans made while
// a new schema's tables are nearly empty must still find rows through the
// indexes once the tables have grown: no statement of a start, claim or
// completion scans the run or task table.
func TestHotPathKeepsIndexPlansAsTablesGrow(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1") // one connection: one plan cache
	require.NoError(t, drv.Migrate(ctx))
	now := time.Now()

	// cycle starts a run of two tasks, claims the first, completes it and
	// makes the second Running in the completion, as the engine does.
	cycle := func(t *testing.T) {
		t.Helper()
		run := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: now}
		first := driver.TaskInsert{ID: uuid.New(), PipelineID: run.ID, WorkflowName: "wf", Name: "a", Status: driver.TaskReady,
			Attempt: 1, MaxAttempts: 1, Input: json.RawMessage(`{}`), AvailableAt: &now, Now: now}
		second := driver.TaskInsert{ID: uuid.New(), PipelineID: run.ID, WorkflowName: "wf", Name: "b", Position: 1,
			Status: driver.TaskNotStarted, MaxAttempts: 1, Now: now}
		inTx(t, drv, func(tx driver.Tx) error {
			return tx.ChangeSetApply(ctx, &driver.ChangeSet{NewPipelines: []*driver.PipelineInsertParams{run},
				NewTasks: []driver.TaskInsert{first, second},
				Outbox:   []driver.OutboxInsert{{TaskID: first.ID, Attempt: 1, WorkflowName: "wf", AvailableAt: now, Now: now}}})
		})
		var claimed *driver.Task
		inTx(t, drv, func(tx driver.Tx) error {
			res, err := tx.TaskClaim(ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 1, Now: now})
			if err == nil && len(res.Tasks) == 1 {
				claimed = res.Tasks[0]
			}
			return err
		})
		require.NotNil(t, claimed)
		inTx(t, drv, func(tx driver.Tx) error {
			res, err := tx.TaskFinishMany(ctx, &driver.TaskFinishParams{
				Finishes: []driver.TaskFinish{{Fence: driver.Fence{TaskID: claimed.ID, RunnerID: "r", Attempt: 1},
					Status: driver.TaskCompleted, Attempt: 1, Now: now}},
				ListPipelineIDs: []uuid.UUID{run.ID}, LockPipelineIDs: []uuid.UUID{run.ID}})
			if err != nil {
				return err
			}
			if len(res.Finished) != 1 || len(res.Tasks) != 2 || len(res.Pipelines) != 1 {
				return fmt.Errorf("finish: %d finished, %d tasks, %d runs", len(res.Finished), len(res.Tasks), len(res.Pipelines))
			}
			return tx.ChangeSetApply(ctx, &driver.ChangeSet{
				Tasks: []driver.TaskUpdate{{ID: second.ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskRunning,
					Attempt: 1, Input: json.RawMessage(`{}`), RunnerID: "r", Now: now}},
				Pipelines: []driver.PipelineUpdate{{ID: run.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelinePaused,
					Now: now}}})
		})
	}
	for range 10 { // past the five custom plans after which PostgreSQL may keep a generic one
		cycle(t)
	}

	// The tables grow behind the cached plans' back.
	const rows = 5000
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`
		WITH p AS (INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
			SELECT gen_random_uuid(), 'wf', 'v1', 'completed', '{}', now(), now() FROM generate_series(1, %[2]d) RETURNING id)
		INSERT INTO %[1]s.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status, max_attempts, created_at, updated_at)
			SELECT gen_random_uuid(), id, 'wf', 'a', 0, 'completed', 1, now(), now() FROM p`,
		pgx.Identifier{schema}.Sanitize(), rows))
	require.NoError(t, err)

	before := seqScans(t, drv, schema)
	for range 3 {
		cycle(t)
	}
	after := seqScans(t, drv, schema)
	require.Equal(t, before, after, "sequential scans of the run and task tables by the hot path")
}

func inTx(t *testing.T, drv driver.Driver, fn func(tx driver.Tx) error) {
	t.Helper()
	tx, err := drv.Begin(t.Context())
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	require.NoError(t, fn(tx))
	require.NoError(t, tx.Commit(t.Context()))
}

// seqScans returns the sequential scans of the run and task tables so far,
// after the driver's connection has flushed its statistics.
func seqScans(t *testing.T, drv *postgres.Driver, schema string) map[string]int64 {
	t.Helper()
	out := tableStats(t, drv, schema, `SELECT relname, seq_scan FROM pg_stat_user_tables
		WHERE schemaname = $1 AND relname IN ('pipeline_executions', 'task_executions', 'execution_events')`)
	require.Len(t, out, 3)
	return out
}

// tableStats runs query, which takes the schema as $1 and returns names and
// counts, once the driver's connection has flushed its statistics.
func tableStats(t *testing.T, drv *postgres.Driver, schema, query string) map[string]int64 {
	t.Helper()
	ctx := t.Context()
	// The one connection reports its pending counts once it is idle.
	_, err := drv.Pool().Exec(ctx, "SELECT pg_stat_force_next_flush()")
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	admin, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer admin.Close(context.WithoutCancel(ctx))
	rows, err := admin.Query(ctx, query, schema)
	require.NoError(t, err)
	out := map[string]int64{}
	for rows.Next() {
		var name string
		var n int64
		require.NoError(t, rows.Scan(&name, &n))
		out[name] = n
	}
	require.NoError(t, rows.Err())
	return out
}

// Listing the children of runs (a run's children in the CLI, Cancel's walk
// down a run tree) finds them through the partial parent index, also in a
// generic plan. There PostgreSQL guesses that = ANY($n) keeps a tenth of
// the table and, under a LIMIT, walked every run newest first instead;
// the query's own IS NOT NULL lets it count only the runs with a parent.
func TestChildListingUsesParentIndex(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1", "plan_cache_mode", "force_generic_plan")
	require.NoError(t, drv.Migrate(ctx))
	parent := uuid.New()
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`INSERT INTO %s.pipeline_executions
			(id, workflow_name, workflow_version, status, input, created_at, updated_at, parent_pipeline_execution_id)
		SELECT gen_random_uuid(), 'wf', 'v1', 'completed', '{}', now() - i * interval '1 second', now(),
			CASE WHEN i %% 100 = 0 THEN $1::uuid END
		FROM generate_series(1, 50000) AS i`, pgx.Identifier{schema}.Sanitize()), parent)
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, "ANALYZE "+pgx.Identifier{schema, "pipeline_executions"}.Sanitize())
	require.NoError(t, err)

	scans := func() map[string]int64 {
		t.Helper()
		return tableStats(t, drv, schema, `SELECT indexrelname, idx_scan FROM pg_stat_user_indexes
			WHERE schemaname = $1 AND relname = 'pipeline_executions'`)
	}
	before := scans()
	const lists = 3
	for range lists {
		ps, err := drv.Reader().PipelineList(ctx, &driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{parent, uuid.New()}, Limit: 100})
		require.NoError(t, err)
		require.Len(t, ps, 100)
	}
	after := scans()
	// (A scan per array element, depending on the plan.)
	require.GreaterOrEqual(t, after["pipeline_executions_parent_idx"], before["pipeline_executions_parent_idx"]+lists, "scans of the parent index")
	require.Equal(t, before["pipeline_executions_created_idx"], after["pipeline_executions_created_idx"], "scans of the creation index")
}

// Retention that keeps the events of unfinished runs reads the run table
// by index, or scans it once per statement, never once per event, even
// with a plan cached while the tables were nearly empty
// (the count, outside a transaction, may then scan the run table; the
// deletion never does); once statistics show a large run table with few
// unfinished runs, neither scans it.
func TestRetentionReadsRunsOncePerBatch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1") // one connection: one plan cache
	require.NoError(t, drv.Migrate(ctx))
	later := time.Now().Add(time.Hour)
	// prune runs two statements: one batch of the deletion and the count.
	prune := func(t *testing.T) {
		t.Helper()
		inTx(t, drv, func(tx driver.Tx) error {
			res, err := tx.EventDelete(ctx, &driver.EventDeleteParams{Before: later, Limit: 100, ExcludeUnfinishedRuns: true})
			if err == nil && res.Deleted == 0 {
				err = fmt.Errorf("nothing deleted")
			}
			return err
		})
		_, err := drv.Reader().EventCount(ctx, &driver.EventCountParams{Before: &later, ExcludeUnfinishedRuns: true})
		require.NoError(t, err)
	}
	// grow adds runs, every unfinishedEvery-th one Running and the others
	// Completed, with eventsPerRun events each, a day old.
	grow := func(t *testing.T, runs, unfinishedEvery, eventsPerRun int) {
		t.Helper()
		_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`
			WITH p AS (INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
				SELECT gen_random_uuid(), 'wf', 'v1', CASE WHEN i %% %[3]d = 0 THEN 'running' ELSE 'completed' END, '{}', now(), now()
				FROM generate_series(1, %[2]d) AS i RETURNING id)
			INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, event_type, event_data, worker_id, created_at)
				SELECT gen_random_uuid(), id, 'task_created', '{}', 'w', now() - interval '1 day' FROM p, generate_series(1, %[4]d)`,
			pgx.Identifier{schema}.Sanitize(), runs, unfinishedEvery, eventsPerRun))
		require.NoError(t, err)
	}
	runScans := func(t *testing.T) int64 {
		t.Helper()
		return seqScans(t, drv, schema)["pipeline_executions"]
	}

	for range 10 { // past the five custom plans after which PostgreSQL may keep a generic one
		grow(t, 2, 2, 1)
		prune(t)
	}
	// The tables grow behind the cached plans' back: 20,000 runs, 200 of
	// them unfinished, and 40,000 events.
	grow(t, 20000, 100, 2)
	before := runScans(t)
	const prunes = 3
	for range prunes {
		prune(t)
	}
	require.LessOrEqual(t, runScans(t)-before, int64(2*prunes), "scans of the run table: at most one per statement")

	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`ANALYZE %[1]s.pipeline_executions; ANALYZE %[1]s.execution_events`,
		pgx.Identifier{schema}.Sanitize()))
	require.NoError(t, err)
	before = runScans(t)
	for range prunes {
		prune(t)
	}
	require.Equal(t, before, runScans(t), "scans of the run table once analyzed")
}

// A batch of retention deletes the events it picked by the primary key.
// Deleting "WHERE sequence_num IN (the batch)" planned, once statistics
// showed a table of some size, as a hash join over a scan of the whole
// event table: every batch of a pass read every event.
func TestRetentionBatchDeletesByPrimaryKey(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1")
	require.NoError(t, drv.Migrate(ctx))
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`
		INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, event_type, event_data, worker_id, created_at)
			SELECT gen_random_uuid(), gen_random_uuid(), 'task_created', '{}', 'w', now() - interval '1 day'
			FROM generate_series(1, 200000);
		ANALYZE %[1]s.execution_events`, pgx.Identifier{schema}.Sanitize()))
	require.NoError(t, err)
	before := seqScans(t, drv, schema)["execution_events"]
	params := &driver.EventDeleteParams{Before: time.Now(), Limit: 1000, UpTo: math.MaxInt64}
	for _, exclude := range []bool{false, true} {
		params.ExcludeUnfinishedRuns = exclude
		for range 7 { // past the five custom plans after which PostgreSQL may keep a generic one
			inTx(t, drv, func(tx driver.Tx) error {
				res, err := tx.EventDelete(ctx, params)
				if err == nil && res.Deleted != 1000 {
					err = fmt.Errorf("deleted %d events, want 1000", res.Deleted)
				}
				params.After = res.Last
				return err
			})
		}
	}
	require.Equal(t, before, seqScans(t, drv, schema)["execution_events"], "scans of the event table")
}

// A batch of run retention finds the events whose task names it keeps
// through the event table's index by run, and their tasks by primary key,
// also with a plan cached once statistics show large tables: it never
// scans the event table, which holds every run's events, nor the task
// table.
func TestRunRetentionNamesEventsThroughIndexes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1") // one connection: one plan cache
	require.NoError(t, drv.Migrate(ctx))
	s := pgx.Identifier{schema}.Sanitize()
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`
		WITH p AS (INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, completed_at, updated_at)
				SELECT gen_random_uuid(), 'wf', 'v1', 'completed', '{}', now() - interval '2 days', now() - interval '2 days', now()
				FROM generate_series(1, 5000) RETURNING id),
			t AS (INSERT INTO %[1]s.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status, max_attempts, created_at, updated_at)
				SELECT gen_random_uuid(), p.id, 'wf', 'task' || i, i, 'completed', 1, now(), now() FROM p, generate_series(0, 1) AS i
				RETURNING id, pipeline_execution_id),
			e AS (INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
				SELECT gen_random_uuid(), t.pipeline_execution_id, t.id, 'task_completed', '{}', 'w', now() FROM t, generate_series(1, 3))
		INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, event_type, event_data, worker_id, created_at)
			SELECT gen_random_uuid(), p.id, 'pipeline_completed', '{}', 'w', now() FROM p`, s))
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, fmt.Sprintf(`ANALYZE %[1]s.pipeline_executions; ANALYZE %[1]s.task_executions; ANALYZE %[1]s.execution_events`, s))
	require.NoError(t, err)

	before := seqScans(t, drv, schema)
	for range 7 { // past the five custom plans after which PostgreSQL may keep a generic one
		inTx(t, drv, func(tx driver.Tx) error {
			ids, err := tx.PipelineDeleteFinished(ctx, &driver.PipelineDeleteParams{Before: time.Now(), Limit: 100})
			if err == nil && len(ids) != 100 {
				err = fmt.Errorf("deleted %d runs, want 100", len(ids))
			}
			return err
		})
	}
	require.Equal(t, before, seqScans(t, drv, schema), "sequential scans by run retention")
	var unnamed, named int
	require.NoError(t, drv.Pool().QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FILTER (WHERE task_name IS NULL), count(*) FILTER (WHERE task_name IS NOT NULL)
		FROM %s.execution_events WHERE task_execution_id IS NOT NULL`, s)).Scan(&unnamed, &named))
	require.Equal(t, 7*100*2*3, named, "the deleted runs' task events name their tasks")
	require.Equal(t, (5000-7*100)*2*3, unnamed, "the others' still take the name from the task")
}

// Events of a type that tasks do not each write (a failure, a retry) are
// found through the partial type index (migration 12), also in a generic
// plan, which cannot see the types a placeholder carries: the read spells
// out the index's predicate. Without the index the 100 newest task_failed
// of 2 M events walked 140,000 rows newest first, and a type the log did
// not hold (task_abandoned) scanned all of them (2.3 s).
func TestEventsByRareTypeUseTypeIndex(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1", "plan_cache_mode", "force_generic_plan")
	require.NoError(t, drv.Migrate(ctx))
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`INSERT INTO %s.execution_events
			(id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
		SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(),
			CASE WHEN i %% 50 = 0 THEN 'task_failed' WHEN i %% 2 = 0 THEN 'task_claimed' ELSE 'task_completed' END,
			'{}', 'w', now() - (50000 - i) * interval '1 second'
		FROM generate_series(1, 50000) AS i`, pgx.Identifier{schema}.Sanitize()))
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, "ANALYZE "+pgx.Identifier{schema, "execution_events"}.Sanitize())
	require.NoError(t, err)

	stats := func() (seq, typeIdx int64) {
		t.Helper()
		st := tableStats(t, drv, schema, `SELECT 'seq', seq_scan FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'execution_events'
			UNION ALL SELECT 'type', idx_scan FROM pg_stat_user_indexes WHERE schemaname = $1 AND indexrelname = 'execution_events_type_idx'`)
		return st["seq"], st["type"]
	}
	seqBefore, idxBefore := stats()
	reads := []*driver.EventListParams{
		{Types: []driver.EventType{driver.EventTaskFailed}, Newest: true, Limit: 100},
		{Types: []driver.EventType{driver.EventTaskFailed, driver.EventTaskAbandoned}, Newest: true, Limit: 10},
		{Types: []driver.EventType{driver.EventTaskAbandoned}},
	}
	for i, q := range reads {
		evs, err := drv.Reader().EventList(ctx, q)
		require.NoError(t, err)
		require.Len(t, evs, []int{100, 10, 0}[i])
		for _, e := range evs {
			require.Equal(t, driver.EventTaskFailed, e.Type)
		}
	}
	seqAfter, idxAfter := stats()
	require.Equal(t, seqBefore, seqAfter, "sequential scans of the event table")
	require.Greater(t, idxAfter, idxBefore, "scans of the type index")

	// One type, newest first: the index yields them in order and the
	// limit stops it, rather than every one of the 1,000 being read and
	// sorted (as = ANY is, before PostgreSQL 17).
	before := indexStats(t, drv, schema)
	evs, err := drv.Reader().EventList(ctx, reads[0])
	require.NoError(t, err)
	require.Len(t, evs, 100)
	read := indexStats(t, drv, schema)["execution_events_type_idx.tup_read"] - before["execution_events_type_idx.tup_read"]
	require.Positive(t, read, "entries of the type index read")
	require.Less(t, read, int64(500), "entries of the type index read")
}

// indexStats returns the scans and the entries read of each index of the
// event and task tables, and the sequential scans of those tables, after
// the driver's connection has flushed its statistics.
func indexStats(t *testing.T, drv *postgres.Driver, schema string) map[string]int64 {
	t.Helper()
	return tableStats(t, drv, schema, `SELECT indexrelname || '.tup_read', idx_tup_read FROM pg_stat_user_indexes
			WHERE schemaname = $1 AND relname IN ('execution_events', 'task_executions')
		UNION ALL SELECT relname || '.seq_scan', seq_scan FROM pg_stat_user_tables
			WHERE schemaname = $1 AND relname IN ('execution_events', 'task_executions')`)
}

// Following from a sequence number (EventQuery.AfterSeq with no
// transaction known, as every read of `events list --follow --run` and
// the first of StreamEvents) starts the follow index scan at that event's
// place. The cursor used to be compared row by row as a filter: each read
// walked the log from its start, 2.4 s for a page after event 1,000,000.
func TestFollowFromSequenceStartsAtItsPlace(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1")
	require.NoError(t, drv.Migrate(ctx))
	// Events of committed transactions (ids far below any running one),
	// a hundred a transaction, in order.
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`INSERT INTO %s.execution_events
			(id, pipeline_execution_id, event_type, event_data, worker_id, created_at, tx_id)
		SELECT gen_random_uuid(), gen_random_uuid(), 'task_claimed', '{}', 'w', now(), (i / 100 + 1)::text::xid8
		FROM generate_series(1, 50000) AS i`, pgx.Identifier{schema}.Sanitize()))
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, "ANALYZE "+pgx.Identifier{schema, "execution_events"}.Sanitize())
	require.NoError(t, err)
	var cursor int64
	require.NoError(t, drv.Pool().QueryRow(ctx, fmt.Sprintf(`SELECT sequence_num FROM %s.execution_events
		ORDER BY sequence_num OFFSET 40000 LIMIT 1`, pgx.Identifier{schema}.Sanitize())).Scan(&cursor))

	before := indexStats(t, drv, schema)
	for range 3 {
		evs, err := drv.Reader().EventList(ctx, &driver.EventListParams{AfterSeq: cursor, Limit: 100})
		require.NoError(t, err)
		require.Len(t, evs, 100)
		require.Equal(t, cursor+1, evs[0].SequenceNum)
	}
	after := indexStats(t, drv, schema)
	require.Equal(t, before["execution_events.seq_scan"], after["execution_events.seq_scan"])
	// Three pages of 100, and the cursor's own row: not the 40,000 before it.
	read := after["execution_events_follow_idx.tup_read"] - before["execution_events_follow_idx.tup_read"]
	require.Less(t, read, int64(1000), "entries of the follow index read")
}

// The events of a large run name their tasks by looking each up by id,
// however the planner weighs a join: never by reading the whole task
// table. On 630,000 tasks PostgreSQL hash-joined them all to the 30,000
// events of a run of 10,000 tasks (1.6 s); the test makes any join but a
// hash join dearer than it is, as a large run's estimates did.
func TestRunEventsLookUpTasksByID(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1", "enable_nestloop", "off", "enable_mergejoin", "off")
	require.NoError(t, drv.Migrate(ctx))
	run := uuid.New()
	s := pgx.Identifier{schema}.Sanitize()
	for _, q := range []string{
		`INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
			VALUES ($1, 'wf', 'v1', 'running', '{}', now(), now())`,
		`INSERT INTO %[1]s.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status, max_attempts, created_at, updated_at)
			SELECT gen_random_uuid(), $1, 'wf', 't' || i, i, 'completed', 1, now(), now() FROM generate_series(1, 2000) AS i`,
		`INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
			SELECT gen_random_uuid(), $1, t.id, k, '{}', 'w', now()
			FROM %[1]s.task_executions t, unnest('{task_marked_ready,task_claimed,task_completed}'::text[]) AS k`,
		// Other runs' tasks.
		`INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
			SELECT gen_random_uuid(), 'wf', 'v1', 'completed', '{}', now(), now() FROM generate_series(1, 2000)`,
		`INSERT INTO %[1]s.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status, max_attempts, created_at, updated_at)
			SELECT gen_random_uuid(), p.id, 'wf', 't' || i, i, 'completed', 1, now(), now()
			FROM %[1]s.pipeline_executions p, generate_series(1, 10) AS i WHERE p.id <> $1`,
	} {
		var args []any
		if strings.Contains(q, "$1") {
			args = append(args, run)
		}
		_, err := drv.Pool().Exec(ctx, fmt.Sprintf(q, s), args...)
		require.NoError(t, err, q)
	}
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf("ANALYZE %[1]s.task_executions, %[1]s.execution_events", s))
	require.NoError(t, err)

	before := indexStats(t, drv, schema)
	evs, err := drv.Reader().EventList(ctx, &driver.EventListParams{PipelineID: &run})
	require.NoError(t, err)
	require.Len(t, evs, 6000)
	require.NotEmpty(t, evs[0].TaskName)
	after := indexStats(t, drv, schema)
	require.Equal(t, before["task_executions.seq_scan"], after["task_executions.seq_scan"], "sequential scans of the task table")
}

// A page of the log before a sequence number (EventListParams.BeforeSeq)
// starts at that number in whichever index serves the rest of the filter,
// also in a generic plan: the primary key, the index by run, or by rare
// type. It reads about a page of entries, not every event above the bound.
func TestEventPagesStartAtTheirBound(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	drv := open(t, schema, "pool_max_conns", "1", "plan_cache_mode", "force_generic_plan")
	require.NoError(t, drv.Migrate(ctx))
	run := uuid.New()
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`INSERT INTO %s.execution_events
			(id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
		SELECT gen_random_uuid(), CASE WHEN i %% 10 = 0 THEN $1 ELSE gen_random_uuid() END, gen_random_uuid(),
			CASE WHEN i %% 50 = 5 THEN 'task_failed' WHEN i %% 2 = 0 THEN 'task_claimed' ELSE 'task_completed' END,
			'{}', 'w', now() - (50000 - i) * interval '1 second'
		FROM generate_series(1, 50000) AS i`, pgx.Identifier{schema}.Sanitize()), run)
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, "ANALYZE "+pgx.Identifier{schema, "execution_events"}.Sanitize())
	require.NoError(t, err)
	var bound int64
	require.NoError(t, drv.Pool().QueryRow(ctx, fmt.Sprintf(`SELECT sequence_num FROM %s.execution_events
		ORDER BY sequence_num OFFSET 10000 LIMIT 1`, pgx.Identifier{schema}.Sanitize())).Scan(&bound))

	for _, q := range []*driver.EventListParams{
		{},
		{PipelineID: &run},
		{Types: []driver.EventType{driver.EventTaskFailed}},
	} {
		q.BeforeSeq, q.Newest, q.Limit = bound, true, 100
		before := indexStats(t, drv, schema)
		for range 3 {
			evs, err := drv.Reader().EventList(ctx, q)
			require.NoError(t, err)
			require.Len(t, evs, 100)
			require.Less(t, evs[0].SequenceNum, bound)
		}
		after := indexStats(t, drv, schema)
		require.Equal(t, before["execution_events.seq_scan"], after["execution_events.seq_scan"], "%+v", q)
		var read int64
		for _, idx := range []string{"execution_events_pkey", "execution_events_pipeline_idx", "execution_events_type_idx"} {
			read += after[idx+".tup_read"] - before[idx+".tup_read"]
		}
		// Three pages of 100: not the 40,000 events above the bound.
		require.Positive(t, read, "%+v", q)
		require.Less(t, read, int64(1000), "entries of the event indexes read for %+v", q)
	}
}

// A narrow time window deep in the log is read through its range of
// sequence numbers, found through the BRIN index on created_at, with a
// plan custom or generic: not by walking the primary key from an end of
// the log and testing every event's time. On 2 M events the walk took
// 170–320 ms for a minute's events (1,200) in the middle of the log, and
// for the ten newest events when the window held no more.
func TestEventWindowReadsItsRange(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema, start := testdb.NewSchema(t), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	drv := secondApartEvents(t, schema, start)
	at := func(s int) *time.Time { v := start.Add(time.Duration(s) * time.Second); return &v }

	generic := open(t, schema, "pool_max_conns", "1", "plan_cache_mode", "force_generic_plan")
	for _, d := range []*postgres.Driver{drv, generic} {
		for _, q := range []*driver.EventListParams{
			{CreatedFrom: at(25000), CreatedBefore: at(25060), Limit: 10},
			{CreatedFrom: at(25000), CreatedBefore: at(25060), Newest: true, Limit: 10},
			{CreatedFrom: at(25000), CreatedBefore: at(25060)},
			{CreatedFrom: at(49995), Newest: true, Limit: 10}, // five events: the walk went on to the oldest
		} {
			before := indexStats(t, d, schema)
			for range 7 { // past the five custom plans after which PostgreSQL may keep a generic one
				evs, err := d.Reader().EventList(ctx, q)
				require.NoError(t, err)
				require.NotEmpty(t, evs)
			}
			after := indexStats(t, d, schema)
			require.Equal(t, before["execution_events.seq_scan"], after["execution_events.seq_scan"], "%+v", q)
			read := after["execution_events_pkey.tup_read"] - before["execution_events_pkey.tup_read"]
			require.Less(t, read, int64(7*(60+100)), "entries of the primary key read for %+v", q)
		}
	}
}

// Retention finds the newest event before its cutoff without walking the
// events after it: in its steady state few events are older than the
// cutoff and most are newer, and the primary key, walked back from the
// newest, read every newer event (430 ms for 1.9 M of them on 2 M). The
// maximum is of the older events, found through the BRIN index.
func TestRetentionFindsItsCutoffWithoutWalkingNewerEvents(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema, start := testdb.NewSchema(t), time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	drv := secondApartEvents(t, schema, start)

	before := indexStats(t, drv, schema)
	var last int64
	var err error
	inTx(t, drv, func(tx driver.Tx) error {
		last, err = tx.EventLastBefore(ctx, start.Add(1000*time.Second+time.Millisecond))
		return err
	})
	require.Equal(t, int64(1000), last)
	after := indexStats(t, drv, schema)
	read := after["execution_events_pkey.tup_read"] - before["execution_events_pkey.tup_read"]
	require.Less(t, read, int64(1000), "entries of the primary key read to find the cutoff")
}

// secondApartEvents migrates schema and fills its log with 50,000 events,
// each of its own run and task, created a second apart after start (event
// i at start + i s), then vacuums and analyzes it as autovacuum would have
// by now (statistics, the BRIN index's ranges summarised).
func secondApartEvents(t *testing.T, schema string, start time.Time) *postgres.Driver {
	t.Helper()
	ctx := t.Context()
	drv := open(t, schema, "pool_max_conns", "1")
	require.NoError(t, drv.Migrate(ctx))
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`INSERT INTO %s.execution_events
			(id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
		SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'task_completed', '{}', 'w', $1::timestamptz + i * interval '1 second'
		FROM generate_series(1, 50000) AS i`, pgx.Identifier{schema}.Sanitize()), start)
	require.NoError(t, err)
	_, err = drv.Pool().Exec(ctx, "VACUUM ANALYZE "+pgx.Identifier{schema, "execution_events"}.Sanitize())
	require.NoError(t, err)
	return drv
}
