package cloacina

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

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

// parkResults starts the run, holds its row once both tasks are running, lets
// them return (the first with a permanent error when fail), and returns
// once a write of their results waits for the holder. flushWait, when
// positive, is the runner's time to record the last results at Stop.
func parkResults(t *testing.T, fail bool, flushWait time.Duration) *parkedRunSetup {
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
	wf := MustWorkflow("w", Task{Name: "a", Run: run(fail)}, Task{Name: "c", Run: run(false)})
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	if flushWait > 0 {
		r.flushWait = flushWait
	}
	require.NoError(t, r.Start(ctx))

	in := NewContext()
	require.NoError(t, in.Set("hold", true))
	held, err := r.ExecuteAsync(ctx, "w", in)
	require.NoError(t, err)
	waitFor(t, started, "the held run's first task")
	waitFor(t, started, "the held run's second task")

	holder := holdRun(t, r.Driver().(*postgres.Driver), held.ID())
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
			h := parkResults(t, fail, 0)

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
	h := parkResults(t, false, 300*time.Millisecond)
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
