package cloacina

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Backlog tells how much of each workflow waits, runs and retries, and
// how long the oldest waiting task has waited.
func TestBacklogCountsWaitingAndRunningWork(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		running := make(chan struct{}, 1)
		release := make(chan struct{})
		busy := MustWorkflow("busy", Task{Name: "hold", Run: func(ctx context.Context, tc *Context) error {
			// Never blocks: once release is closed at cleanup, the other
			// busy tasks may start before Stop, and nobody reads.
			select {
			case running <- struct{}{}:
			default:
			}
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
		retrying := MustWorkflow("retrying", Task{Name: "flaky", Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Hour},
			Run: fail("503")})
		// One slot: the first busy run holds it, the other two wait.
		r := startRunner(t, url, &Config{Workflows: []*Workflow{busy, retrying}, MaxConcurrentTasks: 1})
		t.Cleanup(func() {
			select {
			case <-release:
			default:
				close(release)
			}
		})
		require.Empty(t, mustBacklog(t, r), "nothing to do")

		retried := onEvent(r, eventOf(EventTaskRetryScheduled))
		_, err := r.ExecuteAsync(ctx, "retrying", nil)
		require.NoError(t, err)
		waitFor(t, retried, "the retry to be scheduled")
		before := time.Now()
		for range 3 {
			_, err := r.ExecuteAsync(ctx, "busy", nil)
			require.NoError(t, err)
		}
		waitFor(t, running, "a busy task to run")

		got := mustBacklog(t, r)
		require.Len(t, got, 2)
		b := got[0]
		require.Equal(t, "busy", b.Workflow)
		require.Equal(t, 1, b.Running)
		require.Equal(t, 2, b.Ready, "two tasks wait for the one slot")
		require.Zero(t, b.Delayed)
		require.NotNil(t, b.OldestReadyAt)
		require.WithinDuration(t, before, *b.OldestReadyAt, 5*time.Second)
		require.Equal(t, 1, b.RunningRuns)
		require.Equal(t, 2, b.PendingRuns, "runs whose first task waits are pending")

		rb := got[1]
		require.Equal(t, Backlog{Workflow: "retrying", Delayed: 1, RunningRuns: 1}, rb)
	})
}

func mustBacklog(t *testing.T, r *Runner) []Backlog {
	t.Helper()
	b, err := r.Backlog(testContext(t))
	require.NoError(t, err)
	return b
}

// A runner that is not started (a read-only one, a dashboard) judges due
// times by the database's clock too: with its host's clock two hours
// ahead, a retry due in an hour is still Delayed. It used to compare with
// its own clock and count the retry as waiting to be claimed.
func TestBacklogOfAnUnstartedRunnerUsesTheDatabasesClock(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("retrying", Task{Name: "flaky", Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Hour},
			Run: fail("503")})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		retried := onEvent(r, eventOf(EventTaskRetryScheduled))
		_, err := r.ExecuteAsync(ctx, "retrying", nil)
		require.NoError(t, err)
		waitFor(t, retried, "the retry to be scheduled")
		for _, readOnly := range []bool{false, true} {
			o := openRunner(t, url, &Config{ReadOnly: readOnly})
			skewLocal(o, 2*time.Hour)
			require.Equal(t, []Backlog{{Workflow: "retrying", Delayed: 1, RunningRuns: 1}}, mustBacklog(t, o), "read-only %v", readOnly)
		}
	})
}
