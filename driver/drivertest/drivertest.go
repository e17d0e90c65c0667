// Package drivertest is the conformance suite every Cloacina database
// backend must pass.
//
// A backend's test file constructs the backend and hands it to [Run]:
//
//	func TestConformance(t *testing.T) {
//		drivertest.Run(t, func(t *testing.T) driver.Driver {
//			drv, err := sqlite.Open(testdb.SQLitePath(t))
//			require.NoError(t, err)
//			t.Cleanup(func() { drv.Close() })
//			return drv
//		}, &drivertest.Options{ /* hooks */ })
//	}
//
// The suite pins, once for every backend, the behaviour the engine relies
// on: the doc comments of driver.Driver and driver.Executor, plus the
// choices those comments leave open (written down next to each test).
// Every subtest runs in parallel on its own fresh database.
package drivertest

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// Options tells the suite how to reach a backend beyond what
// driver.Driver offers. The suite cannot type-switch on backends, so
// everything backend-specific comes in through these hooks.
type Options struct {
	// OpenSibling opens a second Driver, with connections of its own, on
	// the database drv uses, and closes it when t ends. Required.
	OpenSibling func(t *testing.T, drv driver.Driver) driver.Driver
	// BeginAppTx begins a transaction of the backend's native type on
	// drv's database, the way an application calling ExecuteTx would, and
	// rolls it back when t ends if it is still open. Required.
	BeginAppTx func(t *testing.T, drv driver.Driver) *AppTx
	// OpenElsewhere opens a Driver of the same backend on another,
	// empty database than drv's (another SQLite file; a schema of the same
	// name in another PostgreSQL database), and closes it and removes
	// that database when t ends. Required.
	OpenElsewhere func(t *testing.T, drv driver.Driver) driver.Driver
	// RecordMigration marks migration version as applied in drv's
	// migrations table, so that the database poses as one migrated by a
	// newer release. Required.
	RecordMigration func(t *testing.T, drv driver.Driver, version int)
	// OpenReadOnly opens a read-only Driver (one whose Begin and Migrate
	// return driver.ErrReadOnly) on the database drv uses, and closes it
	// when t ends. Required.
	OpenReadOnly func(t *testing.T, drv driver.Driver) driver.Driver
	// ConcurrentTx reports that two write transactions can be open at
	// once on one database (PostgreSQL). When false, Begin takes a
	// database-wide write lock (SQLite), and the tests of row locks
	// between two open transactions are skipped.
	ConcurrentTx bool
	// SpawnClaimer, if set, starts another OS process claiming tasks on
	// drv's database, usually with [StartClaimerProcess]. The concurrent
	// claiming test then checks claims across processes as well.
	SpawnClaimer func(t *testing.T, drv driver.Driver, cfg ClaimerConfig) *ClaimerProcess
}

// AppTx is a transaction the application owns, as handed to
// driver.Driver.UnwrapTx.
type AppTx struct {
	// Tx is the native transaction: a *sql.Tx on SQLite, a pgx.Tx on
	// PostgreSQL.
	Tx any
	// Commit and Rollback end Tx the way the application would.
	Commit   func(ctx context.Context) error
	Rollback func(ctx context.Context) error
}

// Run runs the conformance suite. newDriver returns a Driver on a fresh,
// empty database and closes it when t ends; the suite migrates it.
func Run(t *testing.T, newDriver func(t *testing.T) driver.Driver, opts *Options) {
	t.Helper()
	require.NotNil(t, opts, "drivertest.Run needs Options")
	require.NotNil(t, opts.OpenSibling, "drivertest.Options.OpenSibling is required")
	require.NotNil(t, opts.BeginAppTx, "drivertest.Options.BeginAppTx is required")
	require.NotNil(t, opts.OpenElsewhere, "drivertest.Options.OpenElsewhere is required")
	require.NotNil(t, opts.RecordMigration, "drivertest.Options.RecordMigration is required")
	require.NotNil(t, opts.OpenReadOnly, "drivertest.Options.OpenReadOnly is required")
	s := &suite{newDriver: newDriver, opts: *opts}
	groups := []struct {
		name string
		fn   func(t *testing.T, s *suite)
	}{
		{"Migrate", testMigrate},
		{"Tx", testTx},
		{"UnwrapTx", testUnwrapTx},
		{"PipelineInsert", testPipelineInsert},
		{"PipelineInsertMany", testPipelineInsertMany},
		{"PipelineGet", testPipelineGet},
		{"PipelineList", testPipelineList},
		{"PipelineLock", testPipelineLock},
		{"PipelineLockNoWait", testPipelineLockNoWait},
		{"PipelineParent", testPipelineParent},
		{"PipelineStart", testPipelineStart},
		{"TaskInsertMany", testTaskInsertMany},
		{"TaskList", testTaskList},
		{"TaskClaim", testTaskClaim},
		{"TaskClaimConcurrent", testTaskClaimConcurrent},
		{"TaskFinishMany", testTaskFinishMany},
		{"HeldRuns", testHeldRuns},
		{"OutboxPeek", testOutboxPeek},
		{"OutboxDelete", testOutboxDelete},
		{"BacklogList", testBacklogList},
		{"ChangeSetApply", testChangeSetApply},
		{"EventList", testEventList},
		{"EventFollow", testEventFollow},
		{"EventCount", testEventCount},
		{"EventDelete", testEventDelete},
		{"Listen", testListen},
		{"RunnerRegistry", testRunnerRegistry},
		{"Lease", testLease},
		{"TaskListOrphaned", testTaskListOrphaned},
		{"TaskSubStatusSet", testTaskSubStatusSet},
		{"TaskFenceCheck", testTaskFenceCheck},
		{"ClaimOnReady", testClaimOnReady},
		{"ReadOnly", testReadOnly},
		{"BatchSizes", testBatchSizes},
		{"Schedules", testSchedules},
		{"PipelineDeleteFinished", testPipelineDeleteFinished},
		{"TimeBounds", testTimeBounds},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			g.fn(t, s)
		})
	}
}

type suite struct {
	newDriver func(t *testing.T) driver.Driver
	opts      Options
}

// bundle is what one subtest works with: a migrated driver on its own
// database and a fixed clock.
type bundle struct {
	drv driver.Driver
	ctx context.Context
	// now is the base time of every row the test writes. It is fixed,
	// UTC and whole microseconds, so round-tripped times compare equal.
	now time.Time
}

// testTimeout bounds every subtest, so a lock that is waited on instead of
// skipped fails the test instead of hanging it.
const testTimeout = 60 * time.Second

func (s *suite) setup(t *testing.T) *bundle {
	t.Helper()
	b := s.setupUnmigrated(t)
	require.NoError(t, b.drv.Migrate(b.ctx))
	return b
}

func (s *suite) setupUnmigrated(t *testing.T) *bundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return &bundle{
		drv: s.newDriver(t),
		ctx: ctx,
		now: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC),
	}
}

// at returns the base time plus d.
func (b *bundle) at(d time.Duration) time.Time { return b.now.Add(d) }

// inTx runs fn in a write transaction and commits it.
func (b *bundle) inTx(t *testing.T, fn func(tx driver.Tx)) {
	t.Helper()
	tx, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(b.ctx))
	fn(tx)
	require.NoError(t, tx.Commit(b.ctx))
}

// apply writes a change set in its own transaction.
func (b *bundle) apply(t *testing.T, cs *driver.ChangeSet) {
	t.Helper()
	b.inTx(t, func(tx driver.Tx) { require.NoError(t, tx.ChangeSetApply(b.ctx, cs)) })
}

type pipelineOpt func(p *driver.PipelineInsertParams)

func withStatus(s driver.PipelineStatus) pipelineOpt {
	return func(p *driver.PipelineInsertParams) { p.Status = s }
}

func withWorkflow(name string) pipelineOpt {
	return func(p *driver.PipelineInsertParams) { p.WorkflowName = name }
}

func createdAt(at time.Time) pipelineOpt {
	return func(p *driver.PipelineInsertParams) { p.Now = at }
}

func withParent(pipelineID, taskID uuid.UUID) pipelineOpt {
	return func(p *driver.PipelineInsertParams) { p.ParentPipelineID, p.ParentTaskID = &pipelineID, &taskID }
}

func withPipelineID(id uuid.UUID) pipelineOpt {
	return func(p *driver.PipelineInsertParams) { p.ID = id }
}

// insertPipeline creates a Pending pipeline of workflow "wf".
func (b *bundle) insertPipeline(t *testing.T, opts ...pipelineOpt) *driver.PipelineInsertParams {
	t.Helper()
	p := &driver.PipelineInsertParams{
		ID:              uuid.New(),
		WorkflowName:    "wf",
		WorkflowVersion: "v1",
		Status:          driver.PipelinePending,
		Input:           json.RawMessage(`{"run":1}`),
		Now:             b.now,
	}
	for _, o := range opts {
		o(p)
	}
	b.inTx(t, func(tx driver.Tx) {
		ok, err := insertOne(b.ctx, tx, p)
		require.NoError(t, err)
		require.True(t, ok)
	})
	return p
}

// newTask returns a task row of pipeline p at position pos, NotStarted.
func (b *bundle) newTask(p *driver.PipelineInsertParams, pos int) driver.TaskInsert {
	return driver.TaskInsert{
		ID:           uuid.New(),
		PipelineID:   p.ID,
		WorkflowName: p.WorkflowName,
		Name:         "task" + strconv.Itoa(pos),
		Position:     pos,
		Status:       driver.TaskNotStarted,
		MaxAttempts:  3,
		Now:          b.now,
	}
}

func (b *bundle) insertTasks(t *testing.T, tasks ...driver.TaskInsert) {
	t.Helper()
	b.inTx(t, func(tx driver.Tx) { require.NoError(t, tx.TaskInsertMany(b.ctx, tasks)) })
}

// readyTask returns task pos of p created Ready at attempt 1, with input.
func (b *bundle) readyTask(p *driver.PipelineInsertParams, pos int) driver.TaskInsert {
	ti := b.newTask(p, pos)
	ti.Status = driver.TaskReady
	ti.Attempt = 1
	ti.Input = json.RawMessage(`{"pos":` + strconv.Itoa(pos) + `}`)
	return ti
}

// outboxFor returns the outbox row that makes a Ready task claimable at at.
func outboxFor(ti driver.TaskInsert, at time.Time) driver.OutboxInsert {
	return driver.OutboxInsert{TaskID: ti.ID, Attempt: ti.Attempt, WorkflowName: ti.WorkflowName, AvailableAt: at, Now: at}
}

// enqueue inserts Ready tasks with outbox rows claimable at at.
func (b *bundle) enqueue(t *testing.T, at time.Time, tasks ...driver.TaskInsert) {
	t.Helper()
	cs := &driver.ChangeSet{}
	for _, ti := range tasks {
		cs.Outbox = append(cs.Outbox, outboxFor(ti, at))
	}
	b.inTx(t, func(tx driver.Tx) {
		require.NoError(t, tx.TaskInsertMany(b.ctx, tasks))
		require.NoError(t, tx.ChangeSetApply(b.ctx, cs))
	})
}

// claim claims up to limit tasks of workflow "wf" at b.now in its own
// transaction.
func (b *bundle) claim(t *testing.T, runner string, limit int) []*driver.Task {
	t.Helper()
	var out []*driver.Task
	b.inTx(t, func(tx driver.Tx) {
		res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: runner, Workflows: []string{"wf"}, Limit: limit, Now: b.now})
		require.NoError(t, err)
		out = res.Tasks
	})
	return out
}

func (b *bundle) getTask(t *testing.T, id uuid.UUID) *driver.Task {
	t.Helper()
	tasks, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{IDs: []uuid.UUID{id}, WithContexts: true})
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	return tasks[0]
}

func (b *bundle) getPipeline(t *testing.T, id uuid.UUID) *driver.Pipeline {
	t.Helper()
	p, err := b.drv.Reader().PipelineGet(b.ctx, id)
	require.NoError(t, err)
	return p
}

func (b *bundle) peek(t *testing.T, now time.Time, workflows ...string) *driver.OutboxPeekResult {
	t.Helper()
	res, err := b.drv.Reader().OutboxPeek(b.ctx, &driver.OutboxPeekParams{Workflows: workflows, Now: now})
	require.NoError(t, err)
	return res
}

func (b *bundle) events(t *testing.T, params *driver.EventListParams) []*driver.Event {
	t.Helper()
	evs, err := b.drv.Reader().EventList(b.ctx, params)
	require.NoError(t, err)
	return evs
}

// event returns a pipeline event (task nil) or task event created at at.
func event(pid uuid.UUID, task *uuid.UUID, typ driver.EventType, at time.Time) driver.EventInsert {
	return driver.EventInsert{ID: uuid.New(), PipelineID: pid, TaskID: task, Type: typ,
		Data: json.RawMessage(`{"n":1}`), WorkerID: "worker-1", CreatedAt: at}
}

// requireTime checks that got is the instant want, in UTC.
func requireTime(t *testing.T, want time.Time, got time.Time, msgAndArgs ...any) {
	t.Helper()
	require.Truef(t, want.Equal(got), "time: want %s, got %s %v", want.Format(time.RFC3339Nano), got.Format(time.RFC3339Nano), msgAndArgs)
	require.Equal(t, time.UTC, got.Location(), "times are returned in UTC")
}

func requireTimePtr(t *testing.T, want time.Time, got *time.Time, msgAndArgs ...any) {
	t.Helper()
	require.NotNil(t, got, msgAndArgs...)
	requireTime(t, want, *got, msgAndArgs...)
}

// requireJSON checks that got is want byte for byte: a backend returns a
// context or event data as the text it was given (key order, duplicate
// keys, spacing, number forms and escapes included), so that a run reads
// back the same on every backend.
func requireJSON(t *testing.T, want string, got json.RawMessage, msg ...string) {
	t.Helper()
	why := strings.Join(msg, " ")
	require.NotNil(t, got, "want JSON %s, got nil %s", want, why)
	require.Equal(t, want, string(got), "JSON text as written %s", why)
}

func ids[T any](rows []T, id func(T) uuid.UUID) []uuid.UUID {
	out := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		out[i] = id(r)
	}
	return out
}

func pipelineIDs(ps []*driver.Pipeline) []uuid.UUID {
	return ids(ps, func(p *driver.Pipeline) uuid.UUID { return p.ID })
}

func taskIDs(ts []*driver.Task) []uuid.UUID {
	return ids(ts, func(t *driver.Task) uuid.UUID { return t.ID })
}

func eventIDs(evs []*driver.Event) []uuid.UUID {
	return ids(evs, func(e *driver.Event) uuid.UUID { return e.ID })
}
