package cloacina

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A runner of another version of a workflow (the same tasks, another
// retry policy) that claims a task of a run started under the first one
// keeps the attempt budget the task was created with: the one its events,
// GetTask and TaskInfo report, and the one its function was told.
func TestRetryBudgetIsTheRunsAcrossVersions(t *testing.T) {
	t.Parallel()
	version := func(attempts int, seen func(TaskInfo)) *Workflow {
		return MustWorkflow("budget", Task{Name: "a", Retry: &RetryPolicy{MaxAttempts: attempts, Backoff: BackoffFixed,
			InitialDelay: time.Millisecond}, Run: func(ctx context.Context, _ *Context) error {
			info, _ := TaskInfoFrom(ctx)
			seen(info)
			return errors.New("always fails")
		}})
	}
	for name, budgets := range map[string][2]int{"fewer": {3, 1}, "more": {1, 3}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				ctx := testContext(t)
				var mu sync.Mutex
				var infos []TaskInfo
				seen := func(info TaskInfo) {
					mu.Lock()
					defer mu.Unlock()
					infos = append(infos, info)
				}
				v1, v2 := version(budgets[0], seen), version(budgets[1], seen)
				old := openRunner(t, url, &Config{Workflows: []*Workflow{v1}}) // starts the run, never works
				exec, err := old.ExecuteAsync(ctx, "budget", nil)
				require.NoError(t, err)
				r := startRunner(t, url, &Config{Workflows: []*Workflow{v2}})
				res, err := exec.Wait(ctx)
				require.NoError(t, err)
				require.Equal(t, PipelineFailed, res.Status)
				require.Equal(t, v1.Version(), res.WorkflowVersion)

				want := budgets[0]
				detail, err := r.GetTask(ctx, res.Task("a").ID)
				require.NoError(t, err)
				require.Equal(t, want, detail.MaxAttempts)
				require.Equal(t, want, res.Task("a").Attempts, "the run's budget: %d attempts", want)
				mu.Lock()
				defer mu.Unlock()
				require.Len(t, infos, want)
				for i, info := range infos {
					require.Equal(t, i+1, info.Attempt)
					require.Equal(t, want, info.MaxAttempts)
				}
				for _, e := range mustEvents(t, r, res) {
					if e.Type == EventTaskRetryScheduled || e.Type == EventTaskFailed {
						d, err := e.Payload()
						require.NoError(t, err)
						require.Equal(t, want, d.MaxAttempts, "%s: %+v", e.Type, d)
						require.LessOrEqual(t, d.Attempt, d.MaxAttempts, "%s: %+v", e.Type, d)
					}
				}
				requireReplays(t, r, res)
			})
		})
	}
}
