package cloacina

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// Close stops the runner as Stop does: a task waiting for a child run
// (Execute from the task) is drained with it, and its run completes. It
// used to be woken with ErrRunnerClosed, which failed the parent run while
// the child was drained and completed.
func TestCloseDrainsATaskWaitingForAChild(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		childStarted, releaseChild := make(chan struct{}), make(chan struct{})
		release := sync.OnceFunc(func() { close(releaseChild) })
		t.Cleanup(release)
		parentErr := make(chan error, 1)
		child := MustWorkflow("child", Task{Name: "c", Run: func(context.Context, *Context) error {
			close(childStarted)
			<-releaseChild
			return nil
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			res, err := r.Execute(ctx, "child", nil)
			parentErr <- err
			if err != nil {
				return err
			}
			return res.Err()
		}})
		var err error
		r, err = Open(ctx, url, &Config{Workflows: []*Workflow{parent, child}, MaxConcurrentTasks: 2, Logger: quietLogger()})
		require.NoError(t, err)
		require.NoError(t, r.Start(ctx))
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, childStarted, "the child to start")

		closed := make(chan error, 1)
		go func() { closed <- r.Close() }()
		require.Eventually(t, r.isClosed, testTimeout, time.Millisecond)
		select {
		case err := <-parentErr:
			t.Fatalf("the parent's Execute returned while Close drained its child: %v", err)
		default:
		}
		release()
		require.NoError(t, waitFor(t, parentErr, "the parent's Execute to return"))
		require.NoError(t, waitFor(t, closed, "Close to return"))

		other := openRunner(t, url, &Config{Workflows: []*Workflow{parent, child}})
		run, err := other.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, run.Status, "%v", run.Err())
	})
}

// Close racing a Start that has registered the runner but not finished:
// Close used to see the runner not started, close the database and
// return, and Start then failed on the closed database and could not
// remove the runner's row. Close now waits for the Start, which withdraws.
func TestCloseDuringStartLeavesNoRunnerRow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		r, err := Open(ctx, url, &Config{Workflows: []*Workflow{wf}, Logger: quietLogger()})
		require.NoError(t, err)
		registered, closeBegun := make(chan struct{}), make(chan struct{})
		var once sync.Once
		hook := func(*changes) {
			// Start's first commit is its registration.
			once.Do(func() {
				close(registered)
				<-closeBegun
			})
		}
		r.commitHook.Store(&hook)
		started := make(chan error, 1)
		go func() { started <- r.Start(ctx) }()
		waitFor(t, registered, "Start to register the runner")
		closed := make(chan error, 1)
		go func() { closed <- r.Close() }()
		require.Eventually(t, r.isClosed, testTimeout, time.Millisecond)
		close(closeBegun)
		require.ErrorIs(t, waitFor(t, started, "Start to return"), ErrRunnerClosed)
		require.NoError(t, waitFor(t, closed, "Close to return"))

		runners, err := openRunner(t, url, nil).Runners(ctx)
		require.NoError(t, err)
		require.Empty(t, runners, "a runner closed while starting left its row behind")
	})
}

// A second Close, while the first is still stopping the runner, waits for
// it: a deferred Close in main racing a signal handler's must not return
// while the runner's tasks still run. It used to return nil at once.
func TestSecondCloseWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}), make(chan struct{})
		releaseOnce := sync.OnceFunc(func() { close(release) })
		t.Cleanup(releaseOnce)
		var running atomic.Int32
		wf := MustWorkflow("w", Task{Name: "a", Run: func(context.Context, *Context) error {
			running.Add(1)
			defer running.Add(-1)
			close(started)
			<-release
			return nil
		}})
		r, err := Open(ctx, url, &Config{Workflows: []*Workflow{wf}, Logger: quietLogger()})
		require.NoError(t, err)
		require.NoError(t, r.Start(ctx))
		_, err = r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")
		first := make(chan error, 1)
		go func() { first <- r.Close() }()
		require.Eventually(t, r.isClosed, testTimeout, time.Millisecond)
		second := make(chan error, 1)
		go func() { second <- r.Close() }()
		select {
		case err := <-second:
			t.Fatalf("the second Close returned (%v) while the first still stopped the runner (tasks running: %d)", err, running.Load())
		case <-time.After(50 * time.Millisecond): // a negative check: nothing to wait on
		}
		releaseOnce()
		require.NoError(t, waitFor(t, first, "the first Close"))
		require.NoError(t, waitFor(t, second, "the second Close"))
		require.Zero(t, running.Load())
	})
}

// A call made after Close with a context that keeps a task's values
// (context.WithoutCancel of it, or a goroutine the task left running) is
// refused like any caller's: only the runner's own tasks, while Close
// drains them, get through.
func TestTaskContextCallAfterCloseIsRefused(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		owner := openRunner(t, url, nil) // owns the database; never started
		kept := make(chan context.Context, 1)
		wf := MustWorkflow("w", Task{Name: "a", Run: func(ctx context.Context, _ *Context) error {
			kept <- context.WithoutCancel(ctx)
			return nil
		}})
		r, err := NewRunner(ctx, owner.drv, &Config{Workflows: []*Workflow{wf}, Logger: quietLogger()})
		require.NoError(t, err)
		require.NoError(t, r.Start(ctx))
		_, err = r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		taskCtx := waitFor(t, kept, "the task to run")
		require.NoError(t, r.Close())

		_, err = r.ExecuteAsync(taskCtx, "w", nil)
		require.ErrorIs(t, err, ErrRunnerClosed)
		_, err = r.List(taskCtx, nil)
		require.ErrorIs(t, err, ErrRunnerClosed)
		_, err = (&Execution{r: r, id: uuid.New()}).Wait(taskCtx)
		require.ErrorIs(t, err, ErrRunnerClosed)
	})
}

// A Close that comes while a Stop without a deadline drains the runner
// bounds that Stop by its own wait (closeWait): a task waiting for a child
// run that cannot finish meanwhile is handed back, and Close returns.
// Close used to wait for the Stop for ever, once it no longer woke such a
// task with ErrRunnerClosed (which failed its run).
func TestCloseBoundsAStopInProgress(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		childTried := make(chan struct{}, 4)
		child := MustWorkflow("child", Task{Name: "c", Run: func(context.Context, *Context) error {
			childTried <- struct{}{}
			return errors.New("fails; retried in an hour")
		}, Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Hour, MaxDelay: time.Hour}})
		var r *Runner
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			_, err := r.Execute(ctx, "child", nil)
			return err
		}})
		var err error
		r, err = Open(ctx, url, &Config{Workflows: []*Workflow{parent, child}, Logger: quietLogger()})
		require.NoError(t, err)
		r.closeWait = 300 * time.Millisecond
		retried := onEvent(r, eventOf(EventTaskRetryScheduled))
		require.NoError(t, r.Start(ctx))
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, childTried, "the child's first attempt")
		waitFor(t, retried, "the child's retry, an hour away")

		svc := r.services()
		stopped := make(chan error, 1)
		go func() { stopped <- r.Stop(context.Background()) }()
		require.Eventually(t, svc.draining.Load, testTimeout, time.Millisecond, "Stop to begin")
		closed := make(chan error, 1)
		go func() { closed <- r.Close() }()
		require.ErrorIs(t, waitFor(t, stopped, "Stop, bounded by Close"), context.DeadlineExceeded)
		require.NoError(t, waitFor(t, closed, "Close"))

		other := openRunner(t, url, &Config{Workflows: []*Workflow{parent, child}})
		res, err := other.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.NotEqual(t, PipelineFailed, res.Status, "%v", res.Err())
		require.Equal(t, TaskStatusReady, res.Task("p").Status, "handed back for another runner")
	})
}
