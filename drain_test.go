package cloacina

import (
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
	stopped := make(chan error, 1)
	go func() { stopped <- stopping.Stop(ctx) }()
	return stopping, exec, stopped
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
