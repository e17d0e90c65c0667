package cloacina

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// selfStopWait bounds how long a task's Stop or Close may take to return:
// far below the 30 s that Close waits for running tasks, which a call that
// waited for its own task would take.
const selfStopWait = 5 * time.Second

// A task that stops or closes its own runner (on a fatal condition, say)
// gets its call back at once instead of waiting for itself; once it
// returns, its result is recorded as any other's, the stop or close
// completes, and the run's statuses and events agree when the database is
// opened again.
func TestTaskStopsItsOwnRunner(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		call func(ctx context.Context, r *Runner) error
	}{
		{"Stop with the task's context", func(ctx context.Context, r *Runner) error { return r.Stop(ctx) }},
		{"Stop with another context", func(_ context.Context, r *Runner) error { return r.Stop(context.Background()) }},
		{"Close", func(_ context.Context, r *Runner) error { return r.Close() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				ctx := testContext(t)
				var r *Runner
				returned := make(chan error, 1)
				wf := MustWorkflow("fatal", Task{Name: "a", Run: func(ctx context.Context, tc *Context) error {
					// On the task's goroutine: Close knows the task by it.
					returned <- c.call(ctx, r)
					return tc.Set("stopped", true)
				}}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
				r = startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
				exec, err := r.ExecuteAsync(ctx, "fatal", nil)
				require.NoError(t, err)
				select {
				case err := <-returned:
					require.NoError(t, err)
				case <-time.After(selfStopWait):
					t.Fatal("the task's call waited for the task")
				}

				// Wait for the stop or close the task began: a later one
				// waits for it.
				if c.name == "Close" {
					require.NoError(t, r.Close())
				} else {
					require.NoError(t, r.Stop(ctx))
				}

				reopened := openRunner(t, url, nil)
				res, err := reopened.Get(ctx, exec.ID())
				require.NoError(t, err)
				require.Equal(t, TaskStatusCompleted, res.Task("a").Status, "the task's result was recorded")
				// b is left Ready, or run if the runner claimed it as a's
				// result was recorded, before the stop began.
				require.Contains(t, []TaskStatus{TaskStatusReady, TaskStatusCompleted}, res.Task("b").Status)
				requireReplays(t, reopened, res)
				for _, ev := range mustEvents(t, reopened, res) {
					require.NotEqual(t, EventTaskReset, ev.Type, "the task was handed back")
				}
			})
		})
	}
}
