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
)

// workGauge counts the task functions doing work at once and keeps the
// highest count seen.
type workGauge struct{ working, peak atomic.Int32 }

func (g *workGauge) enter() {
	n := g.working.Add(1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
}

func (g *workGauge) leave() { g.working.Add(-1) }

// runParents starts n runs of the "parent" workflow (input(i) is the
// i-th run's input) and waits for them all: each completes, and its task
// "p" records its waits for children as deferred and resumed events
// (none for a child that ended before the wait began). It returns the
// results in start order.
func runParents(t *testing.T, r *Runner, n int, input func(i int) *Context) []*ExecutionResult {
	t.Helper()
	ctx := testContext(t)
	execs := make([]*Execution, n)
	for i := range execs {
		e, err := r.ExecuteAsync(ctx, "parent", input(i))
		require.NoError(t, err)
		execs[i] = e
	}
	results := make([]*ExecutionResult, n)
	for i, e := range execs {
		res, err := e.Wait(ctx)
		require.NoError(t, err, "parent %d", i)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		require.LessOrEqual(t, requireWaitEvents(t, taskEventTypes(t, r, res, "p")), 1)
		results[i] = res
	}
	return results
}

// taskEventTypes returns the event types of a run's task, in order.
func taskEventTypes(t *testing.T, r *Runner, res *ExecutionResult, task string) []EventType {
	t.Helper()
	evs, err := r.TaskEvents(testContext(t), res.Task(task).ID)
	require.NoError(t, err)
	types := make([]EventType, len(evs))
	for i, e := range evs {
		types[i] = e.Type
	}
	require.Equal(t, res.Task(task).Status, Replay(evs).Tasks[res.Task(task).ID])
	return types
}

// requireWaitEvents checks the events of a task that completed after
// waiting: deferred and resumed in turn, as many times as it blocked
// (never, if every run it waited for had ended already).
func requireWaitEvents(t *testing.T, types []EventType) (waits int) {
	t.Helper()
	require.GreaterOrEqual(t, len(types), 5, "events %v", types)
	require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted}, types[:4])
	require.Equal(t, EventTaskCompleted, types[len(types)-1])
	pairs := types[4 : len(types)-1]
	require.Zero(t, len(pairs)%2, "wait events %v", pairs)
	for i, typ := range pairs {
		want := EventTaskDeferred
		if i%2 == 1 {
			want = EventTaskResumed
		}
		require.Equal(t, want, typ, "wait events %v", pairs)
	}
	return len(pairs) / 2
}

// More parents than slots, each waiting in Execute for a child run: the
// waiting parents give their slots back, so the children run. Every slot
// used to stay with a waiting parent, and nothing ran again.
func TestExecuteInATaskGivesItsSlotBack(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		var r *Runner
		child := MustWorkflow("child", Task{Name: "c", Run: func(_ context.Context, tc *Context) error {
			n, err := Get[int](tc, "n")
			if err != nil {
				return err
			}
			return tc.Set("doubled", 2*n)
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, tc *Context) error {
			n, err := Get[int](tc, "n")
			if err != nil {
				return err
			}
			in := NewContext()
			if err := in.Set("n", n); err != nil {
				return err
			}
			res, err := r.Execute(ctx, "child", in)
			if err != nil {
				return err
			}
			if err := res.Err(); err != nil {
				return err
			}
			doubled, err := Get[int](res.Context, "doubled")
			if err != nil {
				return err
			}
			return tc.Set("child_said", doubled)
		}})
		const slots, parents = 2, 5
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}, MaxConcurrentTasks: slots})
		results := runParents(t, r, parents, func(i int) *Context {
			in := NewContext()
			require.NoError(t, in.Set("n", i))
			return in
		})
		for i, res := range results {
			got, err := Get[int](res.Context, "child_said")
			require.NoError(t, err)
			require.Equal(t, 2*i, got)
		}
		slotsFree(t, r)
	})
}

// Parents wait while their children work: no more task functions work at
// once than there are slots, and a wait on a run that has ended already
// neither gives the slot back nor records anything.
func TestWaitingTasksKeepTheSlotBound(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		var r *Runner
		var g workGauge
		work := func(context.Context, *Context) error {
			g.enter()
			defer g.leave()
			return nil
		}
		// Two roots and a join: children have tasks to run side by side.
		child := MustWorkflow("child",
			Task{Name: "a", Run: work},
			Task{Name: "b", Run: work},
			Task{Name: "join", DependsOn: []string{"a", "b"}, Run: work})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			g.enter()
			e, err := r.ExecuteAsync(ctx, "child", nil)
			g.leave()
			if err != nil {
				return err
			}
			res, err := e.Wait(ctx)
			if err != nil {
				return err
			}
			g.enter()
			defer g.leave()
			if err := res.Err(); err != nil {
				return err
			}
			// The child has ended: this wait returns at once.
			_, err = e.Wait(ctx)
			return err
		}})
		const slots, parents = 2, 6
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}, MaxConcurrentTasks: slots})
		runParents(t, r, parents, func(int) *Context { return nil })
		require.LessOrEqual(t, g.peak.Load(), int32(slots), "task functions working at once")
		slotsFree(t, r)
	})
}

// A task that waits for several children at once, from goroutines of its
// own, holds no slot until the last of them is done: with one slot, the
// children run. A wait that gave the task's one slot back per goroutine
// would give back a slot it does not hold.
func TestConcurrentWaitsInOneTask(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		var g workGauge
		child := MustWorkflow("child", Task{Name: "c", Run: func(context.Context, *Context) error {
			g.enter()
			defer g.leave()
			return nil
		}})
		const fanOut = 3
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, tc *Context) error {
			errs := make([]error, fanOut)
			var wg sync.WaitGroup
			for i := range fanOut {
				wg.Go(func() {
					res, err := r.Execute(ctx, "child", nil)
					if err == nil {
						err = res.Err()
					}
					errs[i] = err
				})
			}
			wg.Wait()
			g.enter()
			defer g.leave()
			return errors.Join(errs...)
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}, MaxConcurrentTasks: 1})
		res, err := r.Execute(ctx, "parent", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		require.LessOrEqual(t, g.peak.Load(), int32(1), "task functions working at once")

		// However the waits overlapped, the task was deferred and resumed in
		// turn.
		requireWaitEvents(t, taskEventTypes(t, r, res, "p"))
		slotsFree(t, r)
	})
}

// Cancelling a run whose task waits for a child ends the wait at once,
// without a slot: the task returns although the child's task, which
// holds the only slot, goes on (the cancel reaches the child too, but
// that task ignores its context). The wait is on record (task_deferred,
// no task_resumed).
func TestCancelEndsAWaitForAChild(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		childStarted, releaseChild := make(chan struct{}), make(chan struct{})
		waitErr := make(chan error, 1)
		childID := make(chan *Execution, 1)
		child := MustWorkflow("child", Task{Name: "c", Run: func(context.Context, *Context) error {
			close(childStarted)
			<-releaseChild
			return nil
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			e, err := r.ExecuteAsync(ctx, "child", nil)
			if err != nil {
				return err
			}
			childID <- e
			_, err = e.Wait(ctx)
			waitErr <- err
			if err == nil {
				return fmt.Errorf("the wait ended without an error")
			}
			return err
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}, MaxConcurrentTasks: 1})
		release := sync.OnceFunc(func() { close(releaseChild) })
		t.Cleanup(release) // before the runner closes, should the test fail
		deferred := onEvent(r, eventOf(EventTaskDeferred))
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, deferred, "the parent to wait")
		// With one slot, the child runs only because the parent gave it back.
		waitFor(t, childStarted, "the child to start")
		require.NoError(t, r.Cancel(ctx, exec.ID()))
		require.ErrorIs(t, waitFor(t, waitErr, "the parent's wait to end"), context.Canceled)

		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
		// The parent's task returned and its outcome was recorded while the
		// child still holds the only slot.
		require.Eventually(t, func() bool {
			res, err = r.Get(ctx, exec.ID())
			return err == nil && res.Task("p").Status != TaskStatusRunning
		}, testTimeout, 5*time.Millisecond, "the parent's task is still Running")
		require.Equal(t, TaskStatusFailed, res.Task("p").Status)
		require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted,
			EventTaskDeferred, EventTaskFailed}, taskEventTypes(t, r, res, "p"))

		// The audit log says what the task waited for.
		childExec := waitFor(t, childID, "the child's handle")
		evs, err := r.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskDeferred}})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		data, err := evs[0].Payload()
		require.NoError(t, err)
		require.Equal(t, "waiting for run "+childExec.ID().String(), data.Reason)

		release()
		childRes, err := childExec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, childRes.Status, "the child is cancelled with its parent")
		require.Equal(t, "parent run "+exec.ID().String()+" cancelled", childRes.Error)
		slotsFree(t, r)
	})
}

// Stop lets a task that waits for a child finish: the child's running task
// completes, the parent takes a slot again and completes, and every slot
// is given back once.
func TestStopDrainsATaskWaitingForAChild(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		childStarted, releaseChild := make(chan struct{}), make(chan struct{})
		child := MustWorkflow("child", Task{Name: "c", Run: func(context.Context, *Context) error {
			close(childStarted)
			<-releaseChild
			return nil
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			res, err := r.Execute(ctx, "child", nil)
			if err != nil {
				return err
			}
			return res.Err()
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}, MaxConcurrentTasks: 1})
		release := sync.OnceFunc(func() { close(releaseChild) })
		t.Cleanup(release) // before the runner closes, should the test fail
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, childStarted, "the child to start")
		svc := r.services()
		stopped := stopAsync(t, r)
		release()
		require.NoError(t, waitFor(t, stopped, "Stop to return"))
		require.Empty(t, svc.slots, "slots taken after Stop")

		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted,
			EventTaskDeferred, EventTaskResumed, EventTaskCompleted}, taskEventTypes(t, r, res, "p"))
	})
}

// Two goroutines of one task in DeferUntil give back the task's one slot,
// not two: the slot of another task stays taken. The second used to give
// back a slot the task did not hold.
func TestConcurrentDeferUntilInOneTask(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		holdStarted, releaseHold := make(chan struct{}), make(chan struct{})
		polling := make(chan struct{}, 2)
		var ready atomic.Bool
		hold := MustWorkflow("hold", Task{Name: "h", Run: func(context.Context, *Context) error {
			close(holdStarted)
			<-releaseHold
			return nil
		}})
		fan := MustWorkflow("fan", Task{Name: "f", Run: func(ctx context.Context, _ *Context) error {
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range errs {
				wg.Go(func() {
					calls := 0
					errs[i] = DeferUntil(ctx, time.Millisecond, func(context.Context) (bool, error) {
						if calls++; calls == 2 {
							polling <- struct{}{} // past the first check: waiting
						}
						return ready.Load(), nil
					})
				})
			}
			wg.Wait()
			return errors.Join(errs...)
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{hold, fan}, MaxConcurrentTasks: 2})
		release := sync.OnceFunc(func() { close(releaseHold) })
		t.Cleanup(release)
		holdExec, err := r.ExecuteAsync(ctx, "hold", nil)
		require.NoError(t, err)
		waitFor(t, holdStarted, "the holding task to start")
		fanExec, err := r.ExecuteAsync(ctx, "fan", nil)
		require.NoError(t, err)
		waitFor(t, polling, "the first wait")
		waitFor(t, polling, "the second wait")
		// The claimer holds free slots while it claims: stop it, and let it
		// go idle twice (the second time in a turn begun after the stop), so
		// that only tasks hold slots.
		r.claimsPaused.Store(true)
		idle := make(chan struct{}, 1)
		hook := func(context.Context) {
			select {
			case idle <- struct{}{}:
			default:
			}
		}
		r.idleHook.Store(&hook)
		waitFor(t, idle, "the claimer to go idle")
		waitFor(t, idle, "the claimer to go idle again")
		require.Len(t, r.services().slots, 1, "slots taken while one task works and one waits")

		ready.Store(true)
		release()
		for _, e := range []*Execution{holdExec, fanExec} {
			res, err := e.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		}
		res, err := r.Get(ctx, fanExec.ID())
		require.NoError(t, err)
		require.Equal(t, 1, requireWaitEvents(t, taskEventTypes(t, r, res, "f")), "one deferral for both waits")
		slotsFree(t, r)
	})
}
