package sqlite_test

import (
	"database/sql"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// Without statistics SQLite guesses that an equality on an indexed status
// matches a handful of rows, and will walk every Pending run through the
// status index rather than look up two runs by id. Every statement the
// engine's cycle runs must find run and task rows by their ids (or a run's
// tasks by the run's id), however many rows the table holds.
func TestHotPathFindsRowsByID(t *testing.T) {
	t.Parallel()
	drv, db, parses := openCounting(t)
	cycle := cycler(t, drv)
	for _, n := range []int{1, 2, 3, 7} {
		cycle(n)
	}

	checked := 0
	for _, q := range parses.seen() {
		if !strings.Contains(q, "pipeline_executions") && !strings.Contains(q, "task_executions") ||
			strings.HasPrefix(strings.TrimSpace(q), "INSERT") || !strings.Contains(q, "?") {
			continue
		}
		plan := queryPlan(t, db, q)
		for _, step := range plan {
			if strings.Contains(step, "pipeline_executions") || strings.Contains(step, "task_executions") {
				require.Truef(t, strings.Contains(step, "(id=?)") || strings.Contains(step, "(pipeline_execution_id=?)"),
					"%s\nplan: %s", q, strings.Join(plan, "; "))
			}
		}
		checked++
	}
	require.NotZero(t, checked)
}

// Retention that keeps the events of unfinished runs looks each old
// event's run up by id: the count walks the created_at index, a deleting
// batch the primary key up to its bound, and it stops at its limit
// instead of reading the run table or sorting every old event.
func TestRetentionFindsRunsByID(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, db, parses := openCounting(t)
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	cs := &driver.ChangeSet{}
	for i, st := range []driver.PipelineStatus{driver.PipelineRunning, driver.PipelineCompleted} {
		pid := uuid.New()
		cs.NewPipelines = append(cs.NewPipelines, &driver.PipelineInsertParams{ID: pid, WorkflowName: "wf",
			WorkflowVersion: "v1", Status: st, Input: json.RawMessage(`{}`), Now: now})
		cs.Events = append(cs.Events, driver.EventInsert{ID: uuid.New(), PipelineID: pid, Type: driver.EventTaskCreated,
			Data: json.RawMessage(`{}`), CreatedAt: now.Add(time.Duration(i) * time.Second)})
	}
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	require.NoError(t, tx.ChangeSetApply(ctx, cs))
	later := now.Add(time.Hour)
	n, err := tx.EventCount(ctx, &driver.EventCountParams{Before: &later, ExcludeUnfinishedRuns: true})
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	res, err := tx.EventDelete(ctx, &driver.EventDeleteParams{Before: later, Limit: 10, ExcludeUnfinishedRuns: true})
	require.NoError(t, err)
	require.Equal(t, int64(1), res.Deleted)
	require.NoError(t, tx.Commit(ctx))

	checked := 0
	for _, q := range parses.seen() {
		if !strings.Contains(q, "FROM execution_events e") {
			continue
		}
		plan := strings.Join(queryPlan(t, db, q), "; ")
		if strings.HasPrefix(strings.TrimSpace(q), "DELETE") {
			// A batch walks the primary key from where the last one
			// ended up to its bound, and stops at its limit: no sort of
			// every old event.
			require.Contains(t, plan, "SEARCH e USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)", q)
			require.NotContains(t, plan, "TEMP B-TREE", q)
		} else {
			require.Contains(t, plan, "SEARCH e USING INDEX execution_events_created_idx (created_at<?)", q)
		}
		require.Contains(t, plan, "SEARCH p USING INDEX sqlite_autoindex_pipeline_executions_1 (id=?)", q)
		checked++
	}
	require.Equal(t, 2, checked, "the count and the delete")
}

// A batch of run retention finds the events whose task names it keeps by
// their run, each task by its id, and the runs it deletes by their ids:
// no statement reads a whole table.
func TestRunRetentionFindsEventsByRun(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, db, parses := openCounting(t)
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	pid, tid := uuid.New(), uuid.New()
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{
		NewPipelines: []*driver.PipelineInsertParams{{ID: pid, WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: now}},
		NewTasks: []driver.TaskInsert{{ID: tid, PipelineID: pid, WorkflowName: "wf", Name: "only",
			Status: driver.TaskCompleted, Attempt: 1, MaxAttempts: 1, Now: now}},
		Pipelines: []driver.PipelineUpdate{{ID: pid, FromStatus: driver.PipelinePending, Status: driver.PipelineCompleted,
			StartedAt: &now, CompletedAt: &now, Now: now}},
		Events: []driver.EventInsert{{ID: uuid.New(), PipelineID: pid, TaskID: &tid, Type: driver.EventTaskCompleted,
			Data: json.RawMessage(`{}`), CreatedAt: now}},
	}))
	ids, err := tx.PipelineDeleteFinished(ctx, &driver.PipelineDeleteParams{Before: now.Add(time.Hour), Limit: 10})
	require.NoError(t, err)
	require.Len(t, ids, 1)
	require.NoError(t, tx.Commit(ctx))

	checked := 0
	for _, q := range parses.seen() {
		q = strings.TrimSpace(q)
		var want []string
		switch {
		case strings.HasPrefix(q, "UPDATE execution_events"):
			want = []string{"SEARCH e USING INDEX execution_events_pipeline_idx (pipeline_execution_id=?)",
				"SEARCH t USING INDEX sqlite_autoindex_task_executions_1 (id=?)"}
		case strings.HasPrefix(q, "DELETE FROM pipeline_executions"):
			want = []string{"SEARCH pipeline_executions USING COVERING INDEX sqlite_autoindex_pipeline_executions_1 (id=?)"}
		default:
			continue
		}
		plan := strings.Join(queryPlan(t, db, q), "; ")
		for _, w := range want {
			require.Contains(t, plan, w, q)
		}
		require.NotContains(t, plan, "SCAN e", q)
		require.NotContains(t, plan, "SCAN t", q)
		checked++
	}
	require.Equal(t, 2, checked, "the naming and the deletion")
}

// queryPlan is the EXPLAIN QUERY PLAN of q, one step a line.
func queryPlan(t *testing.T, db *sql.DB, q string) []string {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+q, make([]any, strings.Count(q, "?"))...)
	require.NoError(t, err, q)
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
		plan = append(plan, detail)
	}
	require.NoError(t, rows.Err())
	return plan
}

// Events of a type that tasks do not each write (a failure, a retry) are
// found through the partial type index (migration 12), not by walking
// the whole log.
func TestEventsByRareTypeUseTypeIndex(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, db, parses := openCounting(t)
	for _, q := range []*driver.EventListParams{
		{Types: []driver.EventType{driver.EventTaskFailed}, Newest: true, Limit: 100},
		{Types: []driver.EventType{driver.EventTaskFailed, driver.EventPipelineFailed}, Newest: true, Limit: 100},
		{Types: []driver.EventType{driver.EventTaskAbandoned}},
	} {
		_, err := drv.Reader().EventList(ctx, q)
		require.NoError(t, err)
	}
	checked := 0
	for _, q := range parses.seen() {
		if !strings.Contains(q, "FROM execution_events e LEFT JOIN") || !strings.Contains(q, "event_type IN") {
			continue
		}
		plan := strings.Join(queryPlan(t, db, q), "; ")
		require.Contains(t, plan, "USING INDEX execution_events_type_idx", q)
		require.NotContains(t, plan, "SCAN e", q)
		checked++
	}
	require.Equal(t, 3, checked)

}

// A page of the log before a sequence number (EventListParams.BeforeSeq)
// starts at that number in whichever index serves the rest of the filter:
// the primary key, the index by run, by task or by rare type. It neither
// walks down from the newest event nor sorts.
func TestEventPagesStartAtTheirBound(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, db, parses := openCounting(t)
	run, task := uuid.New(), uuid.New()
	reads := map[string]*driver.EventListParams{
		"(rowid<?)": {},
		"execution_events_pipeline_idx (pipeline_execution_id=? AND sequence_num<?)": {PipelineID: &run},
		"execution_events_task_idx (task_execution_id=? AND sequence_num<?)":         {TaskID: &task},
		"execution_events_type_idx (event_type=? AND sequence_num<?)":                {Types: []driver.EventType{driver.EventTaskFailed}},
	}
	for _, q := range reads {
		q.BeforeSeq, q.Newest, q.Limit = 1000, true, 100
		_, err := drv.Reader().EventList(ctx, q)
		require.NoError(t, err)
	}
	checked := 0
	for _, q := range parses.seen() {
		if !strings.Contains(q, "FROM execution_events e LEFT JOIN") || !strings.Contains(q, "e.sequence_num < ?") {
			continue
		}
		plan := strings.Join(queryPlan(t, db, q), "; ")
		found := 0
		for want := range reads {
			if strings.Contains(plan, want) {
				found++
			}
		}
		require.Equal(t, 1, found, "%s\nplan: %s", q, plan)
		require.NotContains(t, plan, "SCAN e", q)
		require.NotContains(t, plan, "TEMP B-TREE", q)
		checked++
	}
	require.Equal(t, len(reads), checked)
}

// A listing by creation time never sorts the events of its window: a
// narrow window deep in the log is read through its range of sequence
// numbers, found through the created_at index, and a wide one by walking
// the primary key from the end the order starts at, which the limit stops.
// SQLite read a two-sided window through the created_at index and sorted
// it: the newest 50 of 1.8 M events took 2.6–3.4 s, and a one-sided
// window holding ten events was a walk of the whole log (0.4 s on 2 M).
func TestEventWindowsNeverSort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, db, parses := openCounting(t)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) *time.Time { v := start.Add(time.Duration(s) * time.Second); return &v }
	cs := &driver.ChangeSet{}
	for i := range 1000 {
		cs.Events = append(cs.Events, driver.EventInsert{ID: uuid.New(), PipelineID: uuid.New(), Type: driver.EventTaskCompleted,
			Data: json.RawMessage(`{}`), CreatedAt: *at(i)})
	}
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	require.NoError(t, tx.ChangeSetApply(ctx, cs))
	require.NoError(t, tx.Commit(ctx))

	for _, q := range []struct {
		params driver.EventListParams
		plan   []string
	}{
		{driver.EventListParams{CreatedFrom: at(500), CreatedBefore: at(510), Newest: true, Limit: 5},
			[]string{"SEARCH e USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)", "COVERING INDEX execution_events_created_idx (created_at>? AND created_at<?)"}},
		{driver.EventListParams{CreatedFrom: at(995), Newest: true, Limit: 50},
			[]string{"SEARCH e USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)", "COVERING INDEX execution_events_created_idx (created_at>?)"}},
		{driver.EventListParams{CreatedFrom: at(10), CreatedBefore: at(990), Newest: true, Limit: 50},
			[]string{"SCAN e"}},
	} {
		before := map[string]bool{}
		for _, s := range parses.seen() {
			before[s] = true
		}
		evs, err := drv.Reader().EventList(ctx, &q.params)
		require.NoError(t, err)
		require.NotEmpty(t, evs)
		checked := 0
		for _, s := range parses.seen() {
			if before[s] || !strings.Contains(s, "FROM execution_events e LEFT JOIN") {
				continue
			}
			plan := strings.Join(queryPlan(t, db, s), "; ")
			for _, want := range q.plan {
				require.Contains(t, plan, want, s)
			}
			require.NotContains(t, plan, "TEMP B-TREE", s)
			checked++
		}
		require.Equal(t, 1, checked, "%+v", q.params)
	}
}
