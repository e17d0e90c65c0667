package cloacina

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// GetTask shows each task's contexts and claim in every state it can be
// in, and a run's result carries its input.
func TestGetTaskShowsContextsAndClaims(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		running := make(chan struct{})
		release := make(chan struct{})
		wf := MustWorkflow("inspect",
			Task{Name: "a", Run: setKey("x", 1)},
			Task{Name: "b", DependsOn: []string{"a"}, Run: func(ctx context.Context, tc *Context) error {
				if err := tc.Set("partial", true); err != nil {
					return err
				}
				return Permanent(errors.New("refused"))
			}},
			Task{Name: "c", DependsOn: []string{"b"}, Run: ok},
			Task{Name: "d", DependsOn: []string{"a"}, Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Hour},
				Run: fail("not yet")},
			Task{Name: "e", DependsOn: []string{"a"}, Run: func(ctx context.Context, tc *Context) error {
				close(running)
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		t.Cleanup(func() { // before the runner closes, should the test fail
			select {
			case <-release:
			default:
				close(release)
			}
		})
		retried := onEvent(r, eventOf(EventTaskRetryScheduled))
		skipped := onEvent(r, eventOf(EventTaskSkipped))
		input, err := ContextFrom(map[string]any{"in": "v"})
		require.NoError(t, err)
		exec, err := r.ExecuteAsync(ctx, "inspect", input)
		require.NoError(t, err)
		waitFor(t, running, "e to run")
		waitFor(t, retried, "d's retry")
		waitFor(t, skipped, "c to be skipped")

		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, `{"in":"v"}`, res.Input.String())
		task := func(name string) *TaskDetail {
			t.Helper()
			d, err := r.GetTask(ctx, res.Task(name).ID)
			require.NoError(t, err)
			require.Equal(t, res.Task(name).ID, d.ID)
			require.Equal(t, name, d.Name)
			require.Equal(t, exec.ID(), d.RunID)
			require.Equal(t, "inspect", d.Workflow)
			return d
		}

		a := task("a")
		require.Equal(t, TaskStatusCompleted, a.Status)
		require.Equal(t, `{"in":"v"}`, a.Input.String(), "a first task receives the run's input")
		require.Equal(t, `{"in":"v","x":1}`, a.Output.String())
		require.Equal(t, 1, a.MaxAttempts)
		require.Empty(t, a.RunnerID)
		require.Nil(t, a.DueAt)

		b := task("b")
		require.Equal(t, TaskStatusFailed, b.Status)
		require.Equal(t, `{"in":"v","x":1}`, b.Input.String(), "b receives a's output")
		require.Contains(t, b.Error, "refused")
		require.Nil(t, b.Output, "a failed task produced nothing")

		c := task("c")
		require.Equal(t, TaskStatusSkipped, c.Status)
		require.Nil(t, c.Output)
		require.Equal(t, `{"in":"v","x":1}`, c.Input.String(), "what c would have received: b passes on its input")

		d := task("d")
		require.Equal(t, TaskStatusReady, d.Status)
		require.Equal(t, 2, d.MaxAttempts)
		require.NotNil(t, d.DueAt, "a retry's due time")
		require.True(t, d.DueAt.After(time.Now().Add(50*time.Minute)), "due in an hour: %s", d.DueAt)
		require.Nil(t, d.Output)

		e := task("e")
		require.Equal(t, TaskStatusRunning, e.Status)
		require.Equal(t, r.ID(), e.RunnerID)
		require.Equal(t, `{"in":"v","x":1}`, e.Input.String())
		require.Nil(t, e.Output)
		require.Nil(t, e.DueAt)

		_, err = r.GetTask(ctx, uuid.Must(uuid.NewV7()))
		require.ErrorIs(t, err, ErrTaskNotFound)
		require.NoError(t, exec.Cancel(ctx))
		final, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, `{"in":"v"}`, final.Input.String(), "Wait's result carries the input")
	})
}

// Runner.Execution is a handle on any run by its id: one another runner
// started, waited for here, and one that does not exist.
func TestExecutionHandleByID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: setKey("done", true)})
		starter := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		worker := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		exec, err := starter.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)

		handle := worker.Execution(exec.ID())
		require.Equal(t, exec.ID(), handle.ID())
		res, err := handle.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		status, err := handle.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, status)

		missing := worker.Execution(newID())
		_, err = missing.Wait(ctx)
		require.ErrorIs(t, err, ErrRunNotFound)
		_, err = missing.Status(ctx)
		require.ErrorIs(t, err, ErrRunNotFound)
	})
}
