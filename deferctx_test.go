package cloacina

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A task that bounds a wait with a context of its own (a deadline for the
// condition, or for a child run) and goes on when that context ends —
// fallback work — goes on holding a slot, like one whose condition held:
// with one slot, a task started meanwhile waits for it. The wait ends
// with task_resumed. Such a task used to go on without a slot, and
// "deferred", so that two tasks worked at once on one slot.
func TestWaitBoundedByTheTasksOwnContextTakesASlotBack(t *testing.T) {
	t.Parallel()
	for _, wait := range []string{"DeferUntil", "Wait"} {
		t.Run(wait, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				ctx := testContext(t)
				var r *Runner
				var gauge workGauge
				endWait, fallback, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
				waitErr := make(chan error, 1)
				var releaseChild chan struct{}
				// The child waits too, holding no slot, until the test ends.
				child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
					return DeferUntil(ctx, time.Millisecond, func(context.Context) (bool, error) {
						select {
						case <-releaseChild:
							return true, nil
						default:
							return false, nil
						}
					})
				}})
				waiting := MustWorkflow("waiting", Task{Name: "d", Run: func(ctx context.Context, _ *Context) error {
					wctx, cancel := context.WithCancel(ctx)
					defer cancel()
					go func() {
						<-endWait
						cancel()
					}()
					var err error
					if wait == "DeferUntil" {
						err = DeferUntil(wctx, time.Millisecond, func(context.Context) (bool, error) { return false, nil })
					} else {
						var e *Execution
						if e, err = r.ExecuteAsync(ctx, "child", nil); err != nil {
							return err
						}
						_, err = e.Wait(wctx)
					}
					waitErr <- err
					if ctx.Err() != nil {
						return ctx.Err()
					}
					gauge.enter() // fallback work
					defer gauge.leave()
					close(fallback)
					<-release
					return nil
				}})
				other := MustWorkflow("other", Task{Name: "o", Run: func(context.Context, *Context) error {
					gauge.enter()
					defer gauge.leave()
					return nil
				}})
				releaseChild = make(chan struct{})
				r = startRunner(t, url, &Config{Workflows: []*Workflow{waiting, other, child}, MaxConcurrentTasks: 1})
				// Before the runner closes, should the test fail.
				letChildGo, letGo := sync.OnceFunc(func() { close(releaseChild) }), sync.OnceFunc(func() { close(release) })
				t.Cleanup(letChildGo)
				t.Cleanup(letGo)
				deferred := onEvent(r, eventOf(EventTaskDeferred))
				exec, err := r.ExecuteAsync(ctx, "waiting", nil)
				require.NoError(t, err)
				waitFor(t, deferred, "the task to defer")
				close(endWait)
				require.ErrorIs(t, waitFor(t, waitErr, "the wait to end"), context.Canceled)
				waitFor(t, fallback, "the fallback work to begin")

				requireSlotKept(t, r, exec, &gauge, letGo)
				letChildGo()
				res, err := r.Get(ctx, exec.ID())
				require.NoError(t, err)
				require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted,
					EventTaskDeferred, EventTaskResumed, EventTaskCompleted}, taskEventTypes(t, r, res, "d"))
				slotsFree(t, r)
			})
		})
	}
}

// A condition that panics ends the wait like one that fails: the panic
// goes on up, and a task that recovers from it and goes on holds a slot
// again, and is no longer deferred. The task used to go on without a
// slot, deferred, and later waits of the task gave no slot back nor took
// one.
func TestDeferUntilConditionPanicTakesASlotBack(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var gauge workGauge
		panicNow, fallback, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
		recovered := make(chan any, 1)
		waiting := MustWorkflow("waiting", Task{Name: "d", Run: func(ctx context.Context, _ *Context) error {
			func() {
				defer func() { recovered <- recover() }()
				_ = DeferUntil(ctx, time.Millisecond, func(context.Context) (bool, error) {
					select {
					case <-panicNow:
						panic("condition source broke")
					default:
						return false, nil
					}
				})
			}()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			gauge.enter() // fallback work
			defer gauge.leave()
			close(fallback)
			<-release
			// A later wait still gives the slot back and takes it again.
			return DeferUntil(ctx, time.Millisecond, func(context.Context) (bool, error) { return true, nil })
		}})
		other := MustWorkflow("other", Task{Name: "o", Run: func(context.Context, *Context) error {
			gauge.enter()
			defer gauge.leave()
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{waiting, other}, MaxConcurrentTasks: 1})
		letGo := sync.OnceFunc(func() { close(release) })
		t.Cleanup(letGo) // before the runner closes, should the test fail
		deferred := onEvent(r, eventOf(EventTaskDeferred))
		exec, err := r.ExecuteAsync(ctx, "waiting", nil)
		require.NoError(t, err)
		waitFor(t, deferred, "the task to defer")
		close(panicNow)
		require.Equal(t, "condition source broke", waitFor(t, recovered, "the panic"))
		waitFor(t, fallback, "the fallback work to begin")

		requireSlotKept(t, r, exec, &gauge, letGo)
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted,
			EventTaskDeferred, EventTaskResumed, EventTaskCompleted}, taskEventTypes(t, r, res, "d"))
		slotsFree(t, r)
	})
}

// subStatusFailing fails the next fails writes of a task's sub-status
// with a transient error, as a database that restarts does.
type subStatusFailing struct {
	driver.Tx
	fails *atomic.Int32
}

func (tx *subStatusFailing) TaskSubStatusSet(ctx context.Context, p *driver.TaskSubStatusParams) (bool, error) {
	if tx.fails.Add(-1) >= 0 {
		return false, fmt.Errorf("%w: connection refused", driver.ErrTransient)
	}
	return tx.Tx.TaskSubStatusSet(ctx, p)
}

// A database outage when a long wait ends (a restart, a failover: seconds
// of transient errors) delays the end of the wait until the database
// answers again; it does not fail the task, whose condition held. The
// write of task_resumed used to give up after a few tries, about a
// second, and DeferUntil returned the error.
func TestDeferUntilRidesOutATransientOutage(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var fails atomic.Int32
		ready := make(chan struct{})
		wf := MustWorkflow("waiting", Task{Name: "d", Run: func(ctx context.Context, _ *Context) error {
			return DeferUntil(ctx, time.Millisecond, func(context.Context) (bool, error) {
				select {
				case <-ready:
					return true, nil
				default:
					return false, nil
				}
			})
		}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &subStatusFailing{Tx: tx, fails: &fails} })
		require.NoError(t, r.Start(ctx))
		deferred := onEvent(r, eventOf(EventTaskDeferred))
		exec, err := r.ExecuteAsync(ctx, "waiting", nil)
		require.NoError(t, err)
		waitFor(t, deferred, "the task to defer")
		fails.Store(apiTxAttempts + 1) // past the retries of a caller's call
		close(ready)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted,
			EventTaskDeferred, EventTaskResumed, EventTaskCompleted}, taskEventTypes(t, r, res, "d"))
	})
}

// requireSlotKept checks that the task "d" of exec, working again after a
// wait on a runner of one slot, holds that slot: a run of "other" started
// now stays Ready until letGo lets d end, and then both complete, never
// more than one task working at once.
func requireSlotKept(t *testing.T, r *Runner, exec *Execution, gauge *workGauge, letGo func()) {
	t.Helper()
	ctx := testContext(t)
	otherExec, err := r.ExecuteAsync(ctx, "other", nil)
	require.NoError(t, err)
	got, err := r.Get(ctx, otherExec.ID())
	require.NoError(t, err)
	require.Equal(t, TaskStatusReady, got.Task("o").Status,
		"another task was claimed while the only slot belongs to a task doing its fallback work")
	got, err = r.Get(ctx, exec.ID())
	require.NoError(t, err)
	require.Empty(t, got.Task("d").SubStatus, "the task works again: it is not deferred")

	letGo()
	for _, e := range []*Execution{exec, otherExec} {
		res, err := e.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
	}
	require.EqualValues(t, 1, gauge.peak.Load(), "tasks working at once")
}
