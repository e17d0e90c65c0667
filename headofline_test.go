package cloacina

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// parkedRunSetup is a run on a started PostgreSQL runner whose two tasks have
// returned while another transaction (holder) held the run's row: their
// results are being written by a transaction that waits for it.
type parkedRunSetup struct {
	r      *Runner
	run    *Execution
	holder pgx.Tx
}

// parkOpts shape parkResults' runner: fail makes the first task fail
// permanently; flushWait, when positive, is the runner's time to record
// the last results at Stop; logger and hook, when set, are its logger and
// a wrapper of its transactions.
type parkOpts struct {
	fail      bool
	flushWait time.Duration
	logger    *slog.Logger
	hook      func(driver.Tx) driver.Tx
}

// parkResults starts the run, holds its row once both tasks are running, lets
// them return, and returns once a write of their results waits for the
// holder.
func parkResults(t *testing.T, o parkOpts) *parkedRunSetup {
	ctx := testContext(t)
	gate, started := make(chan struct{}), make(chan struct{}, 2)
	run := func(failing bool) TaskFunc {
		return func(ctx context.Context, c *Context) error {
			if hold, _ := c.Get("hold"); hold != true {
				return nil
			}
			started <- struct{}{}
			<-gate
			if failing {
				return Permanent(errors.New("boom"))
			}
			return nil
		}
	}
	wf := MustWorkflow("w", Task{Name: "a", Run: run(o.fail)}, Task{Name: "c", Run: run(false)})
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}, Logger: o.logger})
	if o.flushWait > 0 {
		r.flushWait = o.flushWait
	}
	pg := r.Driver().(*postgres.Driver)
	if o.hook != nil {
		r.drv = hookTxs(r.drv, o.hook)
	}
	require.NoError(t, r.Start(ctx))

	in := NewContext()
	require.NoError(t, in.Set("hold", true))
	held, err := r.ExecuteAsync(ctx, "w", in)
	require.NoError(t, err)
	waitFor(t, started, "the held run's first task")
	waitFor(t, started, "the held run's second task")

	holder := holdRun(t, pg, held.ID())
	var xid string
	require.NoError(t, holder.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid))
	close(gate)
	// The batch that has the results waits runLockWait, then leaves them
	// out; a write of their own then waits for the holder, off the
	// completer's path.
	waitForLockWaiter(t, xid, "a write waiting for the held run")
	return &parkedRunSetup{r: r, run: held, holder: holder}
}

// A completion batch locks the runs of its results. When another
// transaction held one of them (an ExecuteTx left open, a cancel, another
// runner's completion), every later result on the runner waited behind
// it, whatever its run: the completer locked with a plain FOR UPDATE.
// It now waits for a run at most runLockWait, then writes the rest
// without it, and writes the held run's results, in order, once the run
// is free.
func TestCompletionDoesNotWaitBehindAHeldRun(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		name := "completed"
		if fail {
			name = "failed" // the path that locks the runs before deciding
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			h := parkResults(t, parkOpts{fail: fail})

			// The lock is held until another run on the same runner has
			// completed: a completer that waited behind it would never
			// complete that run, and the test would fail at its deadline.
			other, err := h.r.ExecuteAsync(ctx, "w", nil)
			require.NoError(t, err)
			res, err := other.Wait(ctx)
			require.NoError(t, err, "a run on the same runner waited behind the held run's lock")
			require.Equal(t, PipelineCompleted, res.Status)

			require.NoError(t, h.holder.Rollback(ctx))
			res, err = h.run.Wait(ctx)
			require.NoError(t, err)
			want := map[EventType]int{EventTaskCompleted: 2, EventPipelineCompleted: 1}
			if fail {
				require.Equal(t, PipelineFailed, res.Status)
				want = map[EventType]int{EventTaskCompleted: 1, EventTaskFailed: 1, EventPipelineFailed: 1}
			} else {
				require.Equal(t, PipelineCompleted, res.Status)
			}
			require.Equal(t, want, countEvents(t, h.r, h.run.ID(), want), "the held run's results, each recorded once")
		})
	}
}

// A runner stopped while a write of its results waits for a run held
// elsewhere gives that write its flush time, then says what it could not
// record; the results are not recorded half, and a runner started again
// runs the tasks again.
func TestStopWhileAResultWaitsForAHeldRun(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	h := parkResults(t, parkOpts{flushWait: 300 * time.Millisecond})
	err := h.r.Stop(ctx)
	require.Error(t, err, "Stop gave up the held run's results and returned nil")
	require.ErrorContains(t, err, "2 task results not recorded")
	require.NoError(t, h.holder.Rollback(ctx))

	res, err := h.r.Get(ctx, h.run.ID())
	require.NoError(t, err)
	require.Equal(t, TaskStatusRunning, res.Task("a").Status, "no result was recorded")
	require.Equal(t, TaskStatusRunning, res.Task("c").Status, "no result was recorded")
	require.Equal(t, map[EventType]int{EventTaskCompleted: 0}, countEvents(t, h.r, h.run.ID(), map[EventType]int{EventTaskCompleted: 0}))

	// Started again under its own id, the runner takes its claims back and
	// runs both tasks again (recoverOwn).
	require.NoError(t, h.r.Start(ctx))
	res, err = h.run.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
}

// refusingAfterTx makes every TaskFinishMany that returns while refuse
// is set fail with an error that is not transient, the write having been
// made (so a write that was already waiting is refused too), and counts
// the refusals. It signals waiting when a write is about to wait for the
// run after parkMisses writes skipped it: the waiting write, off the
// completer's path.
type refusingAfterTx struct {
	driver.Tx
	refuse  *atomic.Bool
	refused *atomic.Int64
	skips   *atomic.Int64
	waiting func()
}

func (tx *refusingAfterTx) PipelineLockSkipLocked(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	tx.skips.Add(1)
	return tx.Tx.PipelineLockSkipLocked(ctx, ids)
}

func (tx *refusingAfterTx) TaskFinishMany(ctx context.Context, p *driver.TaskFinishParams) (*driver.TaskFinishResult, error) {
	if tx.skips.Load() >= parkMisses {
		tx.waiting()
	}
	res, err := tx.Tx.TaskFinishMany(ctx, p)
	if err == nil && tx.refuse.Load() {
		tx.refused.Add(1)
		return nil, errors.New("permission denied for table task_executions")
	}
	return res, err
}

// When the write that waited for a held run is refused once the run is
// free (a revoked privilege, say), the refusal is logged, as the
// completer's own refusals are, and tried again after a growing delay.
// It was silent (an operator saw a task stay Running with nothing in the
// log, the write tried again every 5 s for ever), and while stopping it
// was tried again at once, in a tight loop, for the whole flush time.
func TestRefusedWriteOfAHeldRunIsLoggedAndBacksOff(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var refuse atomic.Bool
	var refused, skips atomic.Int64
	waiting := make(chan struct{})
	var once sync.Once
	logger, logged := refusalLogger()
	h := parkResults(t, parkOpts{flushWait: time.Second, logger: logger,
		hook: func(tx driver.Tx) driver.Tx {
			return &refusingAfterTx{Tx: tx, refuse: &refuse, refused: &refused, skips: &skips,
				waiting: func() { once.Do(func() { close(waiting) }) }}
		}})
	waitFor(t, waiting, "a write of the held run's results that waits for it")
	var xid string
	require.NoError(t, h.holder.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid))
	waitForLockWaiter(t, xid, "the waiting write to queue for the held run")
	refuse.Store(true)
	require.NoError(t, h.holder.Rollback(ctx))
	waitFor(t, logged, "the refusal of the held run's write to be logged")

	err := h.r.Stop(ctx)
	require.Error(t, err, "Stop gave up the held run's results and returned nil")
	require.ErrorContains(t, err, "2 task results not recorded")
	require.ErrorContains(t, err, "permission denied")
	// Over the 1 s flush time, a delay from 100 ms that doubles allows a
	// handful of tries (each splits its batch of two: up to three refusals);
	// a retry at once makes hundreds.
	require.LessOrEqual(t, refused.Load(), int64(30), "the refused write was tried again without a delay")

	res, err := h.r.Get(ctx, h.run.ID())
	require.NoError(t, err)
	require.Equal(t, TaskStatusRunning, res.Task("a").Status, "no result was recorded")
	require.Equal(t, TaskStatusRunning, res.Task("c").Status, "no result was recorded")
}

// countEvents counts the events of run whose types are keys of want.
func countEvents(t *testing.T, r *Runner, run uuid.UUID, want map[EventType]int) map[EventType]int {
	t.Helper()
	evs, err := r.Events(testContext(t), &EventQuery{RunID: &run})
	require.NoError(t, err)
	got := make(map[EventType]int, len(want))
	for k := range want {
		got[k] = 0
	}
	for _, e := range evs {
		if _, ok := want[e.Type]; ok {
			got[e.Type]++
		}
	}
	return got
}

// lockWaitersOf counts the sessions waiting for transaction xid's locks
// (none when the count cannot be read: it is polled, from the goroutine
// of require.Eventually, until the deadline).
func lockWaitersOf(ctx context.Context, admin *pgx.Conn, xid string) int {
	var n int
	if admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks
		WHERE locktype = 'transactionid' AND transactionid::text = $1 AND NOT granted`, xid).Scan(&n) != nil {
		return 0
	}
	return n
}

// waitForLockWaiter waits until a session waits for a lock that
// transaction xid holds.
func waitForLockWaiter(t *testing.T, xid, what string) {
	t.Helper()
	ctx, admin := testContext(t), adminConn(t)
	require.Eventually(t, func() bool { return lockWaitersOf(ctx, admin, xid) > 0 }, testTimeout, 2*time.Millisecond, what)
}
