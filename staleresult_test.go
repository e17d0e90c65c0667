package cloacina

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A task's result from an earlier claim, still waiting to be written (its
// write committed, but the reply was reported lost, and the retry found
// the run held and parked it), can share a batch with the result of the
// task's next attempt, claimed since. The stale one is fenced out; the
// newer one is recorded. (Both were taken for one claim's two results and
// the second dropped as a duplicate: the task stayed Running under a live
// runner, and its run never ended.)
func TestAStaleResultDoesNotFenceOutTheNextAttempts(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("stale", Task{Name: "work", Run: ok,
			Retry: &RetryPolicy{MaxAttempts: 2, Backoff: BackoffFixed, InitialDelay: time.Millisecond}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}}) // not started: the test claims and completes
		exec, err := r.ExecuteAsync(ctx, wf.Name(), nil)
		require.NoError(t, err)
		require.NoError(t, r.register(ctx))

		first, err := r.claim(ctx, 1, nil)
		require.NoError(t, err)
		require.Len(t, first, 1)
		failed := &taskResult{task: first[0], err: errors.New("first attempt fails"), started: r.now(), finished: r.now()}
		again, _, err := r.flush(ctx, []*taskResult{failed}, waitBounded)
		require.NoError(t, err)
		require.Empty(t, again)

		// The retry is claimed and succeeds.
		var second []*driver.Task
		require.Eventually(t, func() bool {
			second, err = r.claim(ctx, 1, nil)
			require.NoError(t, err)
			return len(second) == 1
		}, testTimeout, time.Millisecond, "the retry to be claimable")
		require.Equal(t, 2, second[0].Attempt)
		out, err := NewContext().MarshalJSON()
		require.NoError(t, err)
		done := &taskResult{task: second[0], output: out, started: r.now(), finished: r.now()}

		// The first attempt's result comes again, ahead of the second's.
		again, _, err = r.flush(ctx, []*taskResult{failed, done}, waitBounded)
		require.NoError(t, err)
		require.Empty(t, again)

		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, TaskStatusCompleted, res.Task("work").Status, "the second attempt's result was recorded")
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, 2, res.Task("work").Attempts)
		requireReplays(t, r, res)
		require.Equal(t, []string{"task_created work", "task_marked_ready work", "pipeline_started",
			"task_claimed work", "task_started work", "task_retry_scheduled work",
			"task_claimed work", "task_started work", "task_completed work", "pipeline_completed"}, eventTypes(t, r, res.ID))
	})
}
