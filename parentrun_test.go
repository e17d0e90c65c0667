package cloacina

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// requireParent checks that run res was started by task of run parent.
func requireParent(t *testing.T, res *ExecutionResult, parent *ExecutionResult, task string) {
	t.Helper()
	require.NotNil(t, res.ParentRunID, "run %s has a parent", res.ID)
	require.NotNil(t, res.ParentTaskID, "run %s has a parent task", res.ID)
	require.Equal(t, parent.ID, *res.ParentRunID)
	require.Equal(t, parent.Task(task).ID, *res.ParentTaskID)
}

// cancelReason returns the reason of a run's pipeline_cancelled event.
func cancelReason(t *testing.T, r *Runner, id uuid.UUID) string {
	t.Helper()
	evs, err := r.Events(testContext(t), &EventQuery{RunID: &id, Types: []EventType{EventPipelineCancelled}})
	require.NoError(t, err)
	require.Len(t, evs, 1, "one pipeline_cancelled event")
	data, err := evs[0].Payload()
	require.NoError(t, err)
	return data.Reason
}

// Cancelling a run cancels the runs its tasks started, and theirs, in the
// same transaction: each ends Cancelled with a reason naming its parent,
// its queued tasks Skipped and its running task's context cancelled. A
// child that finished stays Completed. The links read back through Get
// and List. Before, the child and grandchild went on running.
func TestCancelCascadesToDescendants(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		grandStarted := make(chan struct{})
		grandCause := make(chan error, 1)
		release := make(chan struct{})
		childWait := make(chan error, 1)
		grandchild := MustWorkflow("grandchild",
			Task{Name: "g", Run: func(ctx context.Context, _ *Context) error {
				close(grandStarted)
				select {
				case <-ctx.Done():
					grandCause <- context.Cause(ctx)
					return ctx.Err()
				case <-release: // the test failed: let the runner close
					return nil
				}
			}},
			Task{Name: "after", DependsOn: []string{"g"}, Run: ok},
		)
		child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
			e, err := r.ExecuteAsync(ctx, "grandchild", nil)
			if err != nil {
				return err
			}
			_, err = e.Wait(ctx)
			childWait <- err
			return err
		}})
		done := MustWorkflow("done", Task{Name: "d", Run: ok})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			if _, err := r.Execute(ctx, "done", nil); err != nil {
				return err
			}
			_, err := r.Execute(ctx, "child", nil)
			return err
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child, grandchild, done}})
		t.Cleanup(sync.OnceFunc(func() { close(release) }))

		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, grandStarted, "the grandchild's task to start")
		running, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Nil(t, running.ParentRunID, "a run started outside a task has no parent")
		require.Nil(t, running.ParentTaskID)
		kids, err := r.List(ctx, &ListOpts{ParentRunID: &running.ID})
		require.NoError(t, err)
		require.Len(t, kids, 2)
		require.Equal(t, "child", kids[0].Workflow, "newest first")
		require.Equal(t, "done", kids[1].Workflow)
		childID, doneID := kids[0].ID, kids[1].ID
		grandkids, err := r.List(ctx, &ListOpts{ParentRunID: &childID})
		require.NoError(t, err)
		require.Len(t, grandkids, 1)
		grandID := grandkids[0].ID

		require.NoError(t, r.Cancel(ctx, exec.ID()))
		// One transaction: every unfinished descendant is Cancelled by the
		// time Cancel returns.
		for _, id := range []uuid.UUID{exec.ID(), childID, grandID} {
			res, err := r.Get(ctx, id)
			require.NoError(t, err)
			require.Equal(t, PipelineCancelled, res.Status, "run %s (%s)", id, res.Workflow)
		}
		require.ErrorIs(t, waitFor(t, grandCause, "the grandchild's task context to be cancelled"), errRunCancelled)
		// The cancel reaches the child task's context just after it
		// commits; a wait that reads the grandchild's end in between
		// finds its own run cancelled too, and ends the same way.
		require.ErrorIs(t, waitFor(t, childWait, "the child's wait to end"), context.Canceled)

		parentRes, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, "cancelled on request", parentRes.Error)
		childRes, err := r.Get(ctx, childID)
		require.NoError(t, err)
		requireParent(t, childRes, parentRes, "p")
		require.Equal(t, "parent run "+exec.ID().String()+" cancelled", childRes.Error)
		require.Equal(t, childRes.Error, cancelReason(t, r, childID))
		grandRes, err := r.Get(ctx, grandID)
		require.NoError(t, err)
		requireParent(t, grandRes, childRes, "c")
		require.Equal(t, "parent run "+childID.String()+" cancelled", grandRes.Error)
		require.Equal(t, grandRes.Error, cancelReason(t, r, grandID))
		require.Equal(t, TaskStatusSkipped, grandRes.Task("after").Status)
		require.Equal(t, "run cancelled", grandRes.Task("after").Error)

		doneRes, err := r.Get(ctx, doneID)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, doneRes.Status, "a finished child is left alone")
		requireParent(t, doneRes, parentRes, "p")

		// The summaries carry the link too.
		kids, err = r.List(ctx, &ListOpts{ParentRunID: &childID})
		require.NoError(t, err)
		require.Len(t, kids, 1)
		require.Equal(t, childID, *kids[0].ParentRunID)
		require.Equal(t, childRes.Task("c").ID, *kids[0].ParentTaskID)
		none, err := r.List(ctx, &ListOpts{ParentRunID: &grandID})
		require.NoError(t, err)
		require.Empty(t, none)
		all, err := r.List(ctx, nil)
		require.NoError(t, err)
		require.Len(t, all, 4)

		// Every run's events still replay to its status.
		for _, res := range []*ExecutionResult{parentRes, childRes, grandRes, doneRes} {
			res, err := r.Get(ctx, res.ID)
			require.NoError(t, err)
			require.Equal(t, res.Status, Replay(mustEvents(t, r, res)).Runs[res.ID])
		}
	})
}

// A task of a cancelled run that goes on (its context no longer
// cancelled) cannot start a child: the start locks the parent run and
// finds it Cancelled. Cancel and such a start cannot miss each other, so
// no child escapes the cascade.
func TestCancelledRunStartsNoChildren(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		started := make(chan struct{})
		startErr := make(chan error, 1)
		child := MustWorkflow("child", Task{Name: "c", Run: ok})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			close(started)
			<-ctx.Done()
			_, err := r.ExecuteAsync(context.WithoutCancel(ctx), "child", nil)
			startErr <- err
			return err
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}})
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, started, "the parent's task to start")
		require.NoError(t, r.Cancel(ctx, exec.ID()))
		err = waitFor(t, startErr, "the late start")
		require.ErrorIs(t, err, ErrRunFinished)
		require.ErrorContains(t, err, "parent run "+exec.ID().String()+" is cancelled")
		kids, err := r.List(ctx, &ListOpts{ParentRunID: ptr(exec.ID())})
		require.NoError(t, err)
		require.Empty(t, kids)
		all, err := r.List(ctx, &ListOpts{Workflow: "child"})
		require.NoError(t, err)
		require.Empty(t, all, "no child run was written")
	})
}

// Cancelling a child leaves its parent running: the parent's task sees
// the child's Cancelled result and goes on. Pause is not passed on to
// children either.
func TestCancelAndPauseOfOneRunOnly(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		childStarted := make(chan *ExecutionResult, 1)
		childID := make(chan uuid.UUID, 1)
		release := make(chan struct{})
		child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
			info, _ := TaskInfoFrom(ctx)
			childID <- info.RunID
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-release:
				return nil
			}
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, tc *Context) error {
			res, err := r.Execute(ctx, "child", nil)
			if err != nil {
				return err
			}
			childStarted <- res
			return tc.Set("child_status", string(res.Status))
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}})
		t.Cleanup(sync.OnceFunc(func() { close(release) }))
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		cid := waitFor(t, childID, "the child's task to start")

		require.NoError(t, r.Pause(ctx, exec.ID()))
		st, err := r.Get(ctx, cid)
		require.NoError(t, err)
		require.Equal(t, PipelineRunning, st.Status, "pausing the parent does not pause the child")
		require.NoError(t, r.Resume(ctx, exec.ID()))

		require.NoError(t, r.Cancel(ctx, cid))
		childRes := waitFor(t, childStarted, "the parent to see the child's result")
		require.Equal(t, PipelineCancelled, childRes.Status)
		require.Equal(t, "cancelled on request", childRes.Error)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "the parent goes on: %v", res.Err())
		status, err := Get[string](res.Context, "child_status")
		require.NoError(t, err)
		require.Equal(t, string(PipelineCancelled), status)
	})
}

// A task of a runner on one database starting a run through a runner on
// another database: the parent is not in that database, so the run is
// started without one instead of pointing at a run it cannot hold.
func TestChildOnAnotherDatabaseHasNoParent(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		other := startRunner(t, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{MustWorkflow("child", Task{Name: "c", Run: ok})}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, tc *Context) error {
			res, err := other.Execute(ctx, "child", nil)
			if err != nil {
				return err
			}
			if res.ParentRunID != nil || res.ParentTaskID != nil {
				return errors.New("the child names a parent its database does not hold")
			}
			return tc.Set("child", res.ID.String())
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{parent}})
		res, err := r.Execute(ctx, "parent", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
	})
}

// A task starting children as fast as it can while its run is cancelled:
// every child written before the cancel is cancelled with it, and every
// start after it fails, whichever commits first. None is left running.
func TestCancelRacingChildStarts(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		childRunning := make(chan struct{}, 1024)
		loopErr := make(chan error, 1)
		child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
			childRunning <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			// Starts go on after the task's context is cancelled: only the
			// parent's status stops them.
			start := context.WithoutCancel(ctx)
			for range 100000 {
				if _, err := r.ExecuteAsync(start, "child", nil); err != nil {
					loopErr <- err
					return err
				}
			}
			loopErr <- errors.New("the starts never failed")
			return nil
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}})
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		for range 3 {
			waitFor(t, childRunning, "a child to run")
		}
		require.NoError(t, r.Cancel(ctx, exec.ID()))
		require.ErrorIs(t, waitFor(t, loopErr, "the starts to fail"), ErrRunFinished)

		kids, err := r.List(ctx, &ListOpts{ParentRunID: ptr(exec.ID()), Limit: 1 << 20})
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(kids), 3)
		for _, k := range kids {
			require.Equal(t, PipelineCancelled, k.Status, "child %s", k.ID)
			require.Equal(t, "parent run "+exec.ID().String()+" cancelled", k.Error)
		}
		all, err := r.List(ctx, &ListOpts{Workflow: "child", Limit: 1 << 20})
		require.NoError(t, err)
		require.Len(t, all, len(kids), "every child run is linked to its parent")
	})
}

// The cascade reaches a child whose task runs on another runner: its
// context is cancelled there (PostgreSQL's NOTIFY, SQLite's poll for
// cancelled runs), as for a run cancelled on its own.
func TestCancelCascadeReachesAnotherRunner(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		childCause := make(chan error, 1)
		childRunning := make(chan struct{})
		release := make(chan struct{})
		child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
			close(childRunning)
			select {
			case <-ctx.Done():
				childCause <- context.Cause(ctx)
				return ctx.Err()
			case <-release: // the test failed: let the runner close
				return nil
			}
		}})
		other := startRunner(t, url, &Config{Workflows: []*Workflow{child}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			_, err := other.Execute(ctx, "child", nil)
			return err
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{parent}})
		t.Cleanup(sync.OnceFunc(func() { close(release) }))
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		waitFor(t, childRunning, "the child's task to start on the other runner")
		require.NoError(t, r.Cancel(ctx, exec.ID()))
		require.ErrorIs(t, waitFor(t, childCause, "the child's task context to be cancelled"), errRunCancelled)
		kids, err := r.List(ctx, &ListOpts{ParentRunID: ptr(exec.ID())})
		require.NoError(t, err)
		require.Len(t, kids, 1)
		require.Equal(t, PipelineCancelled, kids[0].Status)
	})
}

// A child that finished without waiting for a run it started leaves that
// grandchild running; cancelling the top run still reaches it, through
// the finished child, which stays Completed.
func TestCancelReachesPastAFinishedChild(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		grandRunning := make(chan uuid.UUID, 1)
		release := make(chan struct{})
		grandchild := MustWorkflow("grandchild", Task{Name: "g", Run: func(ctx context.Context, _ *Context) error {
			info, _ := TaskInfoFrom(ctx)
			grandRunning <- info.RunID
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-release: // the test failed: let the runner close
				return nil
			}
		}})
		child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
			_, err := r.ExecuteAsync(ctx, "grandchild", nil) // and not waited for
			return err
		}})
		childDone := make(chan *ExecutionResult, 1)
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			res, err := r.Execute(ctx, "child", nil)
			if err != nil {
				return err
			}
			childDone <- res
			<-ctx.Done()
			return ctx.Err()
		}})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child, grandchild}})
		t.Cleanup(sync.OnceFunc(func() { close(release) }))
		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		gid := waitFor(t, grandRunning, "the grandchild's task to start")
		require.Equal(t, PipelineCompleted, waitFor(t, childDone, "the child to end").Status)
		kids, err := r.List(ctx, &ListOpts{ParentRunID: ptr(exec.ID())})
		require.NoError(t, err)
		require.Len(t, kids, 1)

		require.NoError(t, r.Cancel(ctx, exec.ID()))
		res, err := r.Get(ctx, kids[0].ID)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "the finished child is left alone")
		res, err = r.Get(ctx, gid)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
		require.Equal(t, kids[0].ID, *res.ParentRunID)
		require.Equal(t, "ancestor run "+exec.ID().String()+" cancelled", res.Error)
	})
}

// A task waiting on a child run whose cancel cascaded from its own run
// ends its wait with the context's error, even when the wait reads the
// child's Cancelled end before the cancel reaches the task's context. It
// used to return the child's result (Cancelled, nil error) then. Here
// the cancel comes from another runner, and the task's runner drops
// cancel wake-ups, so it would learn of the cancel only by its poll (a
// minute), while the wait polls the child every few milliseconds.
func TestWaitOnAChildCancelledWithItsOwnRunEndsWithTheContext(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		childStarted := make(chan uuid.UUID, 1)
		waited := make(chan error, 1)
		release := make(chan struct{})
		child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
			// Its runner hears of the cancel a minute later: the test
			// lets it go at its end, so that the runner can close.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-release:
				return nil
			}
		}})
		parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
			e, err := r.ExecuteAsync(ctx, "child", nil)
			if err != nil {
				return err
			}
			childStarted <- e.ID()
			_, err = e.Wait(ctx)
			waited <- err
			return err
		}})
		cfg := &Config{Workflows: []*Workflow{parent, child}, PollInterval: time.Minute}
		r = openRunner(t, url, cfg)
		r.drv = &wakeupFilter{Driver: r.drv, drop: "cancel:"}
		require.NoError(t, r.Start(ctx))
		t.Cleanup(func() { close(release) }) // before the runners close
		other := openRunner(t, url, cfg)

		exec, err := r.ExecuteAsync(ctx, "parent", nil)
		require.NoError(t, err)
		childID := waitFor(t, childStarted, "the child run to start")
		require.NoError(t, other.Cancel(ctx, exec.ID()))
		res, err := other.Get(ctx, childID)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status, "cancelled with its parent")
		require.ErrorIs(t, waitFor(t, waited, "the parent task's wait to end"), context.Canceled)
		parentRes, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, parentRes.Status)
	})
}

// wakeupFilter is a driver whose subscriptions never deliver the wake-ups
// that start with drop: a runner on it learns of those events only by
// polling.
type wakeupFilter struct {
	driver.Driver
	drop string
}

func (d *wakeupFilter) Listen(ctx context.Context) (driver.Subscription, error) {
	sub, err := d.Driver.Listen(ctx)
	if err != nil {
		return nil, err
	}
	return &filteredSubscription{Subscription: sub, drop: d.drop}, nil
}

type filteredSubscription struct {
	driver.Subscription
	drop string
}

func (s *filteredSubscription) Wait(ctx context.Context) (string, error) {
	for {
		payload, err := s.Subscription.Wait(ctx)
		if err != nil || !strings.HasPrefix(payload, s.drop) {
			return payload, err
		}
	}
}
