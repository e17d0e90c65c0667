package cloacina

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// refusingTx makes every TaskFinishMany fail, while refuse is set, with an
// error that is not transient: the database refuses the task's result.
type refusingTx struct {
	driver.Tx
	refuse *atomic.Bool
}

func (tx *refusingTx) TaskFinishMany(ctx context.Context, p *driver.TaskFinishParams) (*driver.TaskFinishResult, error) {
	if tx.refuse.Load() {
		return nil, errors.New("permission denied for table task_executions")
	}
	return tx.Tx.TaskFinishMany(ctx, p)
}

// A Stop that gives up recording a task's result (the database refuses it
// until Stop's wait for the completer ends) says so: the task stays
// Running, to be run again once its claim is recovered. Stop used to
// return nil, as if every result had been recorded.
func TestStopReportsResultsItCouldNotRecord(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}), make(chan struct{})
		wf := MustWorkflow("w", Task{Name: "a", Run: func(context.Context, *Context) error {
			close(started)
			<-release
			return nil
		}})
		logger, refused := refusalLogger()
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Logger: logger})
		var refuse atomic.Bool
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &refusingTx{Tx: tx, refuse: &refuse} })
		r.flushWait = 300 * time.Millisecond
		require.NoError(t, r.Start(ctx))
		exec, err := r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")
		refuse.Store(true)
		close(release)
		waitFor(t, refused, "the result to be refused")

		err = r.Stop(ctx)
		require.Error(t, err, "Stop gave up a task's result and returned nil")
		require.ErrorContains(t, err, "1 task result")
		refuse.Store(false)
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, TaskStatusRunning, res.Task("a").Status, "the result was not recorded")
	})
}

// failingTx makes every TaskFinishMany fail with a transient error while
// fail is set: the database is down for completions, which are retried.
type failingTx struct {
	driver.Tx
	fail *atomic.Bool
}

func (tx *failingTx) TaskFinishMany(ctx context.Context, p *driver.TaskFinishParams) (*driver.TaskFinishResult, error) {
	if tx.fail.Load() {
		return nil, fmt.Errorf("%w: connection refused", driver.ErrTransient)
	}
	return tx.Tx.TaskFinishMany(ctx, p)
}

// Stop keeps its deadline when the database fails every completion while
// results wait for the completer and a task ignores its cancelled
// context: the task is handed back, and the results given up, when
// Stop's wait for the completer ends. Stop used to wait for ever to hand
// the task back to a completer that was retrying an earlier result,
// behind a full queue of results.
func TestStopHandsBackPastAStuckCompleter(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		// Tasks return at once until the completer is stuck retrying a
		// result and the queue behind it is full; the next one waits,
		// ignoring its context.
		// The first task's result is the one the completer retries; the
		// second returns once it does, and fills the queue (one slot, so
		// one result); the third then waits, ignoring its context.
		logger, retried := refusalLogger()
		var r *Runner
		var began atomic.Int32
		blocked, release := make(chan struct{}), make(chan struct{})
		wf := MustWorkflow("w", Task{Name: "a", Run: func(ctx context.Context, _ *Context) error {
			if began.Add(1) == 1 {
				return nil
			}
			select {
			case <-retried:
			case <-ctx.Done():
				return ctx.Err()
			}
			if svc := r.services(); len(svc.results) < cap(svc.results) {
				return nil
			}
			close(blocked)
			<-release // ignores its context
			return nil
		}})
		r = openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Logger: logger, MaxConcurrentTasks: 1})
		var fail atomic.Bool
		fail.Store(true)
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &failingTx{Tx: tx, fail: &fail} })
		r.flushWait = 300 * time.Millisecond
		var unblock sync.Once
		cleanup := func() { unblock.Do(func() { fail.Store(false); close(release) }) }
		t.Cleanup(cleanup) // before the runner's Close
		require.NoError(t, r.Start(ctx))
		for range 10 {
			_, err := r.ExecuteAsync(ctx, "w", nil)
			require.NoError(t, err)
		}
		waitFor(t, blocked, "a task to start behind the stuck completer")

		stopCtx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		stopped := make(chan error, 1)
		go func() { stopped <- r.Stop(stopCtx) }()
		select {
		case err := <-stopped:
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.ErrorContains(t, err, "task results not recorded")
		case <-time.After(testTimeout):
			cleanup()
			t.Fatalf("Stop hung past its deadline; it returned %v once the database came back", <-stopped)
		}
	})
}
