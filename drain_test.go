package cloacina

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// drainSetup starts a runner that runs wf's stalling task and calls Stop
// on it while the task runs. It returns the runner and a channel that
// receives Stop's result.
func drainSetup(t *testing.T, url string, wf *Workflow, s *stall) (*Runner, *Execution, <-chan error) {
	t.Helper()
	ctx := testContext(t)
	stopping := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	s.zombies[stopping.ID()] = true
	require.NoError(t, stopping.Start(ctx))
	exec, err := stopping.ExecuteAsync(ctx, wf.Name(), nil)
	require.NoError(t, err)
	waitFor(t, s.started, "the task to start")
	return stopping, exec, stopAsync(t, stopping)
}

// stopAsync calls r.Stop in the background and returns once Stop has
// begun; the channel receives Stop's result.
func stopAsync(t *testing.T, r *Runner) <-chan error {
	t.Helper()
	ctx := testContext(t)
	svc := r.services()
	stopped := make(chan error, 1)
	go func() { stopped <- r.Stop(ctx) }()
	require.Eventually(t, svc.draining.Load, testTimeout, time.Millisecond, "Stop to begin")
	return stopped
}

// A runner that Stop is draining still heartbeats: the leader's sweeps,
// several runner timeouts after Stop began, leave its running task alone,
// and the task finishes under its own claim.
func TestStoppingRunnerStaysAliveWhileItsTasksFinish(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		wf := MustWorkflow("drain", Task{Name: "work", Run: s.run})
		leader := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
		leader.claimsPaused.Store(true)
		leads := leadership(leader)
		require.NoError(t, leader.Start(ctx))
		waitLeader(t, leads, true)
		sweeps := sweepsOf(leader)
		reset := onEvent(leader, eventOf(EventTaskReset))

		stopping, exec, stopped := drainSetup(t, url, wf, s)
		// A runner that stopped heartbeating when Stop began would be dead
		// from one runner timeout on, and the first sweep after that would
		// reset its task: wait for two sweeps that begin after three.
		dead := time.Now().Add(3 * stopping.cfg.RunnerTimeout)
		for n := 0; n < 2; {
			require.NoError(t, waitFor(t, sweeps, "a sweep"))
			if time.Now().After(dead) {
				n++
			}
		}
		select {
		case e := <-reset:
			t.Fatalf("the leader reset task %v of a runner that is stopping", e.TaskID)
		case err := <-stopped:
			t.Fatalf("Stop returned (%v) while its task runs", err)
		default:
		}

		close(s.release)
		require.NoError(t, waitFor(t, s.ended, "the task to return"))
		require.NoError(t, waitFor(t, stopped, "Stop to return"))
		res, err := leader.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Zero(t, res.Task("work").Recoveries)
		ranOn, err := Get[string](res.Context, "ran_on")
		require.NoError(t, err)
		require.Equal(t, "zombie", ranOn, "the task's own result was recorded")
	})
}

// A runner that Stop is draining still hears that a run was cancelled by
// another runner, and cancels the run's task.
func TestStoppingRunnerHearsCancellations(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		t.Cleanup(func() { close(s.release) })
		wf := MustWorkflow("drain", Task{Name: "work", Run: s.run})
		other := openRunner(t, url, nil)

		_, exec, stopped := drainSetup(t, url, wf, s)
		require.NoError(t, other.Cancel(ctx, exec.ID()))
		require.ErrorIs(t, waitFor(t, s.ended, "the task to hear of the cancellation"), errRunCancelled)
		require.NoError(t, waitFor(t, stopped, "Stop to return"))
		res, err := other.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
	})
}

// A lone runner stops while a task waits in Execute for a child run that
// is still queued, and the child's task in turn waits for a grandchild:
// Stop claims those runs' tasks, and only those, and returns once the
// parent has completed with what its descendants returned. The claimer
// used to end when Stop began, and the parent waited for a runner that
// never came.
func TestStopFinishesTheChildRunsItsTasksWaitFor(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var r *Runner
		draining := make(chan struct{})
		callChild := func(workflow, key string) TaskFunc {
			return func(ctx context.Context, tc *Context) error {
				res, err := r.Execute(ctx, workflow, nil)
				if err != nil {
					return err
				}
				if err := res.Err(); err != nil {
					return err
				}
				got, err := Get[string](res.Context, key)
				if err != nil {
					return err
				}
				return tc.Set(workflow, got)
			}
		}
		leaf := MustWorkflow("leaf", Task{Name: "l", Run: setKey("leaf", "from the leaf")})
		middle := MustWorkflow("middle", Task{Name: "m", Run: callChild("leaf", "leaf")})
		child := callChild("middle", "leaf")
		top := MustWorkflow("top", Task{Name: "t", Run: func(ctx context.Context, tc *Context) error {
			select {
			case <-draining:
			case <-ctx.Done():
				return ctx.Err()
			}
			return child(ctx, tc)
		}})
		other := MustWorkflow("other", Task{Name: "o", Run: ok})
		r = startRunner(t, url, &Config{Workflows: []*Workflow{top, middle, leaf, other}})
		started := onEvent(r, eventOf(EventTaskStarted))
		exec, err := r.ExecuteAsync(ctx, "top", nil)
		require.NoError(t, err)
		waitFor(t, started, "the parent task to start")

		stopped := stopAsync(t, r)
		// Work queued now that no task of this runner waits for is left
		// for other runners.
		unrelated, err := r.ExecuteAsync(ctx, "other", nil)
		require.NoError(t, err)
		close(draining)

		require.NoError(t, waitFor(t, stopped, "Stop to return"))
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		got, err := Get[string](res.Context, "middle")
		require.NoError(t, err)
		require.Equal(t, "from the leaf", got)
		require.Equal(t, 1, requireWaitEvents(t, taskEventTypes(t, r, res, "t")))
		status, err := unrelated.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelinePending, status, "a stopping runner claimed a run no task of its waits for")
	})
}

// Work that a stopping runner's completions make ready is announced to
// the other runners (NOTIFY on PostgreSQL, the in-process hub on SQLite):
// the stopping runner no longer claims it. It used to count its free slots
// as its own and send no wake-up, so the work waited for other runners'
// next poll.
func TestStoppingRunnerWakesOthersForTheWorkItMakesReady(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		s := newStall()
		wf := MustWorkflow("drain", Task{Name: "work", Run: s.run}, Task{Name: "next", DependsOn: []string{"work"}, Run: ok})
		stopping, exec, stopped := drainSetup(t, url, wf, s)
		notified := make(chan []string, 1)
		hook := func(c *changes) {
			for _, e := range c.cs.Events {
				if e.Type == EventTaskMarkedReady {
					select {
					case notified <- c.cs.Notify:
					default:
					}
				}
			}
		}
		stopping.commitHook.Store(&hook)

		close(s.release)
		require.Contains(t, waitFor(t, notified, "the next task to be made ready"), workPayload(wf.Name()))
		require.NoError(t, waitFor(t, stopped, "Stop to return"))

		// Another runner, whose poll is an hour away, hears of it.
		other := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
		require.NoError(t, other.Start(testContext(t)))
		res, err := other.wait(testContext(t), exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
	})
}
