package cloacina

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func fail(msg string) TaskFunc {
	return func(context.Context, *Context) error { return errors.New(msg) }
}

func TestDefaultRuleSkipsOnUpstreamFailureAndCascades(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("w",
			Task{Name: "a", Run: fail("nope")},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
			Task{Name: "c", DependsOn: []string{"b"}, Run: ok},
			Task{Name: "side", Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "w", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Equal(t, TaskStatusFailed, res.Task("a").Status)
		require.Equal(t, "nope", res.Task("a").Error)
		require.Equal(t, TaskStatusSkipped, res.Task("b").Status)
		require.Equal(t, `upstream task "a" failed`, res.Task("b").Error)
		require.Equal(t, TaskStatusSkipped, res.Task("c").Status)
		require.Equal(t, `upstream task "b" was skipped`, res.Task("c").Error)
		require.Equal(t, TaskStatusCompleted, res.Task("side").Status)
	})
}

// A failure does not end the run while another task still runs: the run
// stays Running, the other task finishes and records its output, and the
// run is Failed by the transaction that ends that last task.
func TestRunFailsWhenItsLastRunningTaskEnds(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}), make(chan struct{})
		wf := MustWorkflow("lasting",
			Task{Name: "bad", Run: fail("bad failed")},
			Task{Name: "slow", Run: func(_ context.Context, tc *Context) error {
				close(started)
				<-release
				return tc.Set("slow", true)
			}},
		)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 2})
		failed := onEvent(r, eventOf(EventTaskFailed))
		require.NoError(t, r.Start(ctx))
		exec, err := r.ExecuteAsync(ctx, "lasting", nil)
		require.NoError(t, err)
		waitFor(t, started, "the slow task to start")
		waitFor(t, failed, "the bad task's failure to be recorded")
		status, err := exec.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineRunning, status, "a task still runs")

		close(release)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Equal(t, TaskStatusCompleted, res.Task("slow").Status)
		require.True(t, res.Context.Has("slow"), "the final context holds the last task's output")
		evs := mustEvents(t, r, res)
		last := evs[len(evs)-1]
		require.Equal(t, EventPipelineFailed, last.Type)
		require.Equal(t, EventTaskCompleted, evs[len(evs)-2].Type)
		require.Equal(t, res.Task("slow").ID, *evs[len(evs)-2].TaskID)
		require.Equal(t, last.CreatedAt, evs[len(evs)-2].CreatedAt, "the run ends in the transaction that ends its last task")
	})
}

func TestTriggerRulesEndToEnd(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("rules",
			Task{Name: "good", Run: setKey("n", 5)},
			Task{Name: "bad", Run: fail("bad failed")},
			Task{Name: "always", DependsOn: []string{"bad"}, Trigger: Always(), Run: ok},
			Task{Name: "on_failure", DependsOn: []string{"bad"}, Trigger: All(TaskFailed("bad")), Run: ok},
			Task{Name: "on_success_of_bad", DependsOn: []string{"bad"}, Trigger: All(TaskSuccess("bad")), Run: ok},
			Task{Name: "any", DependsOn: []string{"good", "bad"}, Trigger: Any(TaskSuccess("bad"), TaskSuccess("good")), Run: ok},
			Task{Name: "none", DependsOn: []string{"good", "bad"}, Trigger: None(TaskSkipped("good"), TaskSkipped("bad")), Run: ok},
			Task{Name: "n_gt_3", DependsOn: []string{"good"}, Trigger: All(ContextValue("n", OpGreaterThan, 3)), Run: ok},
			Task{Name: "n_lt_3", DependsOn: []string{"good"}, Trigger: All(ContextValue("n", OpLessThan, 3)), Run: ok},
			Task{Name: "n_eq_5", DependsOn: []string{"good"}, Trigger: All(ContextValue("n", OpEquals, 5)), Run: ok},
			Task{Name: "n_ne_5", DependsOn: []string{"good"}, Trigger: All(ContextValue("n", OpNotEquals, 5)), Run: ok},
			Task{Name: "has_n", DependsOn: []string{"good"}, Trigger: All(ContextValue("n", OpExists, nil)), Run: ok},
			Task{Name: "no_m", DependsOn: []string{"good"}, Trigger: All(ContextValue("m", OpNotExists, nil)), Run: ok},
			Task{Name: "tag_contains", Trigger: All(ContextValue("tags", OpContains, "x")), Run: ok},
			Task{Name: "tag_not_contains", Trigger: All(ContextValue("tags", OpNotContains, "x")), Run: ok},
			// The rule sees exactly what the task receives: skipped
			// upstreams pass their input through.
			Task{Name: "after_skip", DependsOn: []string{"on_success_of_bad"}, Trigger: All(TaskSkipped("on_success_of_bad"), ContextValue("tags", OpExists, nil)), Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		input, err := ContextFrom(map[string]any{"tags": []string{"x", "y"}})
		require.NoError(t, err)
		res, err := r.Execute(testContext(t), "rules", input)
		require.NoError(t, err)
		want := map[string]TaskStatus{
			"good": TaskStatusCompleted, "bad": TaskStatusFailed, "always": TaskStatusCompleted, "on_failure": TaskStatusCompleted,
			"on_success_of_bad": TaskStatusSkipped, "any": TaskStatusCompleted, "none": TaskStatusCompleted,
			"n_gt_3": TaskStatusCompleted, "n_lt_3": TaskStatusSkipped, "n_eq_5": TaskStatusCompleted, "n_ne_5": TaskStatusSkipped,
			"has_n": TaskStatusCompleted, "no_m": TaskStatusCompleted, "tag_contains": TaskStatusCompleted,
			"tag_not_contains": TaskStatusSkipped, "after_skip": TaskStatusCompleted,
		}
		for name, status := range want {
			require.Equal(t, status, res.Task(name).Status, name)
		}
		require.Equal(t, `trigger rule all(context_value("n" less_than 3)) not satisfied`, res.Task("n_lt_3").Error)
		require.Equal(t, PipelineFailed, res.Status, "a handled failure still fails the run")
	})
}

// A rule reads the same merge the task receives: when two dependencies
// write one key, the later declared wins for the rule too, so swapping the
// order of DependsOn flips the decision.
func TestContextValueSeesTheLaterDeclaredDependency(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("conflict",
			Task{Name: "a", Run: setKey("n", 1)},
			Task{Name: "b", Run: setKey("n", 2)},
			Task{Name: "ab", DependsOn: []string{"a", "b"}, Trigger: All(ContextValue("n", OpEquals, 2)), Run: ok},
			Task{Name: "ba", DependsOn: []string{"b", "a"}, Trigger: All(ContextValue("n", OpEquals, 2)), Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "conflict", nil)
		require.NoError(t, err)
		require.Equal(t, TaskStatusCompleted, res.Task("ab").Status, "b is declared last, so the rule sees n=2")
		require.Equal(t, TaskStatusSkipped, res.Task("ba").Status, "a is declared last, so the rule sees n=1")
		require.Equal(t, `trigger rule all(context_value("n" equals 2)) not satisfied`, res.Task("ba").Error)
		require.Equal(t, PipelineCompleted, res.Status)
	})
}

func TestRunOfSkippedRootsCompletesWithoutClaims(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("gated",
			Task{Name: "a", Trigger: All(ContextValue("go", OpEquals, true)), Run: ok},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
		)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		// Not started: the run must end by itself at creation.
		res, err := r.Execute(testContext(t), "gated", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, TaskStatusSkipped, res.Task("a").Status)
		require.Equal(t, TaskStatusSkipped, res.Task("b").Status)
		evs, err := r.Events(testContext(t), &EventQuery{RunID: &res.ID, Types: []EventType{EventPipelineStarted, EventPipelineCompleted}})
		require.NoError(t, err)
		require.Len(t, evs, 2)
		require.Equal(t, EventPipelineStarted, evs[0].Type)
	})
}

func TestRetryCountingAndBackoff(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		var calls, permCalls, transientCalls atomic.Int32
		delay := 30 * time.Millisecond
		wf := MustWorkflow("retry",
			Task{Name: "always_fails", Retry: &RetryPolicy{MaxAttempts: 3, Backoff: BackoffLinear, InitialDelay: delay},
				Run: func(context.Context, *Context) error { calls.Add(1); return errors.New("down") }},
			Task{Name: "permanent", Retry: &RetryPolicy{MaxAttempts: 5, InitialDelay: time.Millisecond},
				Run: func(context.Context, *Context) error { permCalls.Add(1); return Permanent(errors.New("invalid input")) }},
			Task{Name: "transient_only", Retry: &RetryPolicy{MaxAttempts: 5, InitialDelay: time.Millisecond, RetryOn: []RetryCondition{RetryTransient()}},
				Run: func(context.Context, *Context) error { transientCalls.Add(1); return errors.New("not transient") }},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "retry", nil)
		require.NoError(t, err)
		require.EqualValues(t, 3, calls.Load(), "MaxAttempts counts total attempts")
		require.Equal(t, 3, res.Task("always_fails").Attempts)
		require.EqualValues(t, 1, permCalls.Load(), "a permanent error skips remaining retries")
		require.EqualValues(t, 1, transientCalls.Load(), "RetryTransient does not retry other errors")

		evs, err := r.TaskEvents(testContext(t), res.Task("always_fails").ID)
		require.NoError(t, err)
		var retries []*Event
		var claims []*Event
		for _, e := range evs {
			switch e.Type {
			case EventTaskRetryScheduled:
				retries = append(retries, e)
			case EventTaskClaimed:
				claims = append(claims, e)
			}
		}
		require.Len(t, retries, 2)
		require.Len(t, claims, 3)
		for i, e := range retries {
			d, err := e.Payload()
			require.NoError(t, err)
			want := delay * time.Duration(i+1) // linear: 30ms, 60ms
			require.Equal(t, want.Milliseconds(), *d.DelayMS)
			require.Equal(t, e.CreatedAt.Add(want), d.RetryAt.Truncate(time.Microsecond))
			// The next claim never happens before the due time.
			require.False(t, claims[i+1].CreatedAt.Before(d.RetryAt.Truncate(time.Microsecond)), "attempt %d claimed early", i+2)
		}
	})
}

func TestMergeFollowsDeclaredDependencyOrder(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		received := make(chan map[string]any, 2)
		capture := func(_ context.Context, tc *Context) error {
			x, _ := tc.Get("x")
			obj, _ := tc.Get("obj")
			input, _ := tc.Get("input")
			received <- map[string]any{"x": x, "obj": obj, "input": input}
			return nil
		}
		wf := MustWorkflow("merge",
			Task{Name: "a", Run: func(_ context.Context, tc *Context) error {
				return errors.Join(tc.Set("x", "from a"), tc.Set("obj", map[string]any{"a": 1, "shared": "a"}))
			}},
			Task{Name: "b", Run: func(_ context.Context, tc *Context) error {
				return errors.Join(tc.Set("x", "from b"), tc.Set("obj", map[string]any{"b": 2, "shared": "b"}))
			}},
			Task{Name: "ab", DependsOn: []string{"a", "b"}, Run: capture},
			Task{Name: "ba", DependsOn: []string{"b", "a"}, Run: capture},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		input, err := ContextFrom(map[string]any{"input": "kept"})
		require.NoError(t, err)
		res, err := r.Execute(testContext(t), "merge", input)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		got := []map[string]any{<-received, <-received}
		var ab, ba map[string]any
		for _, g := range got {
			if g["x"] == "from b" {
				ab = g
			} else {
				ba = g
			}
		}
		require.NotNil(t, ab)
		require.NotNil(t, ba)
		require.Equal(t, map[string]any{"a": 1.0, "b": 2.0, "shared": "b"}, ab["obj"], "objects merge deeply; later dependency wins")
		require.Equal(t, map[string]any{"a": 1.0, "b": 2.0, "shared": "a"}, ba["obj"])
		require.Equal(t, "kept", ab["input"])

		// The final context merges the leaves (ab, ba) in declaration order.
		x, err := Get[string](res.Context, "x")
		require.NoError(t, err)
		require.Equal(t, "from a", x)
	})
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		var cooperative atomic.Int32
		release := make(chan struct{})
		wf := MustWorkflow("timeouts",
			Task{Name: "cooperative", Timeout: 50 * time.Millisecond,
				Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond, RetryOn: []RetryCondition{RetryTransient()}},
				Run: func(ctx context.Context, _ *Context) error {
					cooperative.Add(1)
					<-ctx.Done()
					return ctx.Err()
				}},
			Task{Name: "stubborn", Run: func(context.Context, *Context) error {
				<-release // ignores its context
				return nil
			}},
			// Sees its timeout and returns nil as if done: it still ran
			// past its timeout, like the others.
			Task{Name: "quiet", Timeout: 50 * time.Millisecond, Run: func(ctx context.Context, c *Context) error {
				<-ctx.Done()
				return c.Set("partial", true)
			}},
			Task{Name: "after_quiet", DependsOn: []string{"quiet"}, Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, TaskTimeout: 50 * time.Millisecond})
		t.Cleanup(func() { close(release) }) // runs before the runner's Close
		res, err := r.Execute(testContext(t), "timeouts", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.EqualValues(t, 2, cooperative.Load(), "a timeout is a retryable (transient) failure")
		require.Contains(t, res.Task("cooperative").Error, `task "cooperative": task timed out after 50ms`)
		require.Equal(t, TaskStatusFailed, res.Task("stubborn").Status, "recorded even though the function never returned")
		require.Contains(t, res.Task("stubborn").Error, "timed out after 50ms")
		require.Equal(t, TaskStatusFailed, res.Task("quiet").Status, "nil returned after the timeout is no success")
		require.Contains(t, res.Task("quiet").Error, `task "quiet": task timed out after 50ms`)
		require.Equal(t, TaskStatusSkipped, res.Task("after_quiet").Status)
	})
}

// An Always task is no clean-up hook for a cancel: a cancelled run starts
// no more tasks, so the Always task after a cancelled one is Skipped with
// the cancel's reason. (Its doc said only "whatever its dependencies'
// outcome", which a reader could take to cover a cancel.)
func TestCancelSkipsAnAlwaysTask(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{})
		var cleaned atomic.Bool
		wf := MustWorkflow("cancel_always",
			Task{Name: "work", Run: func(ctx context.Context, _ *Context) error {
				close(started)
				<-ctx.Done()
				return ctx.Err()
			}},
			Task{Name: "cleanup", DependsOn: []string{"work"}, Trigger: Always(), Run: func(context.Context, *Context) error {
				cleaned.Store(true)
				return nil
			}},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		exec, err := r.ExecuteAsync(ctx, "cancel_always", nil)
		require.NoError(t, err)
		waitFor(t, started, "task work to start")
		require.NoError(t, exec.Cancel(ctx))
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
		require.Equal(t, TaskStatusSkipped, res.Task("cleanup").Status)
		require.Equal(t, "run cancelled", res.Task("cleanup").Error)
		require.False(t, cleaned.Load())
	})
}

// Execute's ctx bounds the wait, not the run: when it ends first, Execute
// returns its error and the run goes on to its end. (Its doc did not say
// which; a caller whose request timed out could take the run for
// abandoned.)
func TestExecuteContextBoundsTheWaitNotTheRun(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{})
		release := make(chan struct{})
		wf := MustWorkflow("outlives_wait", Task{Name: "a", Run: func(context.Context, *Context) error {
			close(started)
			<-release
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		waitCtx, cancel := context.WithCancel(ctx)
		go func() { <-started; cancel() }()
		res, waitErr := r.Execute(waitCtx, "outlives_wait", nil)
		require.ErrorIs(t, waitErr, context.Canceled)
		require.Nil(t, res)
		close(release)
		runs, err := r.List(ctx, &ListOpts{Workflow: "outlives_wait"})
		require.NoError(t, err)
		require.Len(t, runs, 1)
		require.ErrorContains(t, waitErr, "run "+runs[0].ID.String()+` of workflow "outlives_wait", no longer waited for`,
			"the error names the run, which goes on")
		final, err := r.Execution(runs[0].ID).Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, final.Status, "the run went on after Execute returned")
	})
}

// A task function can tell its timeout from other cancellations by the
// context's cause, which is ErrTaskTimeout to errors.Is. It used to be an
// unexported error of its own ("task timeout") that only looked like it.
func TestTimeoutCauseIsErrTaskTimeout(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		causes := make(chan error, 1)
		wf := MustWorkflow("timeout_cause", Task{Name: "a", Timeout: 20 * time.Millisecond, Run: func(ctx context.Context, _ *Context) error {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return context.Cause(ctx)
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "timeout_cause", nil)
		require.NoError(t, err)
		cause := waitFor(t, causes, "the task to see its timeout")
		require.ErrorIs(t, cause, ErrTaskTimeout)
		require.True(t, IsTransient(cause), "a timeout is transient, as the recorded failure is")
		require.Equal(t, TaskStatusFailed, res.Task("a").Status)
		require.Contains(t, res.Task("a").Error, `task "a": task timed out after 20ms`)
	})
}

// A task's timeout holds after its run is cancelled: a function that
// ignores its context does not keep the task Running in the cancelled run
// past the timeout (plus the grace it gets to return).
func TestTimeoutOutlastsCancel(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{})
		release := make(chan struct{})
		wf := MustWorkflow("cancel_timeout", Task{Name: "a", Timeout: 100 * time.Millisecond, Run: func(context.Context, *Context) error {
			close(started)
			<-release // ignores its context
			return errors.New("late")
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		t.Cleanup(func() { close(release) }) // runs before the runner's Close
		failed := onEvent(r, eventOf(EventTaskFailed))
		exec, err := r.ExecuteAsync(ctx, "cancel_timeout", nil)
		require.NoError(t, err)
		waitFor(t, started, "task a to start")
		require.NoError(t, r.Cancel(ctx, exec.ID()))
		e := waitFor(t, failed, "task a's timeout to be recorded in the cancelled run")
		require.Contains(t, string(e.Data), "timed out after 100ms")
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
		require.Equal(t, TaskStatusFailed, res.Task("a").Status)
	})
}

func TestPanickingTaskFails(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("panics", Task{Name: "p", Run: func(context.Context, *Context) error { panic("kaboom") }})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "panics", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Contains(t, res.Task("p").Error, "task panicked: kaboom")
	})
}

// nilErr is an error type whose Error method reads its receiver, so that
// a nil *nilErr returned as an error panics when asked for its text.
type nilErr struct{ msg string }

func (e *nilErr) Error() string { return e.msg }

// A task returning an error whose Error method panics (the classic typed
// nil) fails its attempt; it used to crash the process from the
// completer, which reads the error outside the task's recover.
func TestTaskReturningAnUnreadableErrorFails(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("typed_nil", Task{Name: "a", Run: func(context.Context, *Context) error {
			var err *nilErr
			return err
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "typed_nil", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Contains(t, res.Task("a").Error, "returned a *cloacina.nilErr whose Error method panicked")
	})
}

// unwrapErr is an error type whose Unwrap reads its receiver: a nil
// *unwrapErr describes itself but panics when its chain is walked.
type unwrapErr struct{ inner error }

func (e *unwrapErr) Error() string { return "unwrap error" }
func (e *unwrapErr) Unwrap() error { return e.inner }

// The same for an error whose chain panics when walked (as IsPermanent
// and IsTransient do to decide a retry): the attempt fails, keeping the
// error's text.
func TestTaskReturningAnUnwalkableErrorFails(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("typed_nil_unwrap", Task{Name: "a", Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond},
			Run: func(context.Context, *Context) error {
				var err *unwrapErr
				return err
			}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "typed_nil_unwrap", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Contains(t, res.Task("a").Error, "unwrap error (the task returned a *cloacina.unwrapErr whose error chain panicked when walked")
	})
}

// A task function that ends its goroutine without returning
// (runtime.Goexit, which t.FailNow and require call) fails its attempt,
// with a timeout or without. It used to count as a success with a timeout
// and to leave the task Running, and the run unfinished, without one.
func TestTaskCallingGoexitFails(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		goexit := func(context.Context, *Context) error { runtime.Goexit(); return nil }
		plain := MustWorkflow("goexit", Task{Name: "a", Run: goexit}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
		timed := MustWorkflow("goexit_timeout", Task{Name: "a", Run: goexit, Timeout: time.Minute}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{plain, timed}})
		for _, name := range []string{"goexit", "goexit_timeout"} {
			res, err := r.Execute(testContext(t), name, nil)
			require.NoError(t, err)
			require.Equal(t, PipelineFailed, res.Status, name)
			require.Contains(t, res.Task("a").Error, "exited without returning (runtime.Goexit", name)
			require.Equal(t, TaskStatusSkipped, res.Task("b").Status, name)
		}
	})
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{})
		release := make(chan struct{})
		var bRan atomic.Bool
		wf := MustWorkflow("pausable",
			Task{Name: "a", Run: func(context.Context, *Context) error { close(started); <-release; return nil }},
			Task{Name: "b", DependsOn: []string{"a"}, Run: func(context.Context, *Context) error { bRan.Store(true); return nil }},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		aDone := onEvent(r, eventOf(EventTaskCompleted))
		exec, err := r.ExecuteAsync(ctx, "pausable", nil)
		require.NoError(t, err)
		waitFor(t, started, "task a to start")

		require.NoError(t, r.Pause(ctx, exec.ID()))
		require.NoError(t, r.Pause(ctx, exec.ID()), "pausing twice is a no-op")
		status, err := exec.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelinePaused, status)

		close(release) // the running task finishes while paused
		waitFor(t, aDone, "task a's completion to be recorded")

		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelinePaused, res.Status)
		require.Equal(t, TaskStatusCompleted, res.Task("a").Status)
		require.Equal(t, TaskStatusReady, res.Task("b").Status, "b became ready but is held back")
		peek, err := r.Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{"pausable"}, Now: time.Now().Add(time.Hour)})
		require.NoError(t, err)
		require.False(t, peek.Claimable, "a paused run has nothing in the outbox")
		require.False(t, bRan.Load())

		require.NoError(t, r.Resume(ctx, exec.ID()))
		final, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, final.Status)
		require.True(t, bRan.Load())
		require.ErrorIs(t, r.Resume(ctx, exec.ID()), ErrRunFinished)

		evs, err := r.Events(ctx, &EventQuery{RunID: &final.ID, Types: []EventType{EventPipelinePaused, EventPipelineResumed}})
		require.NoError(t, err)
		require.Len(t, evs, 2)
		replayed := Replay(mustEvents(t, r, final))
		require.Equal(t, PipelineCompleted, replayed.Runs[final.ID])
	})
}

// Pause takes the outbox rows a run already has, a fresh task's and a
// scheduled retry's, and Resume puts them back as they were: the fresh
// task claimable at once, the retry only at its due time (resuming does
// not cut a backoff short).
func TestPauseResumeMovesExistingOutboxRows(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		peek := func(r *Runner, workflow string, now time.Time) *driver.OutboxPeekResult {
			t.Helper()
			res, err := r.Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{workflow}, Now: now})
			require.NoError(t, err)
			return res
		}
		later := func() time.Time { return time.Now().Add(24 * time.Hour) }

		t.Run("Fresh", func(t *testing.T) {
			wf := MustWorkflow("fresh", Task{Name: "a", Run: ok})
			r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}}) // not started: a stays in the outbox
			exec, err := r.ExecuteAsync(ctx, "fresh", nil)
			require.NoError(t, err)
			require.True(t, peek(r, "fresh", time.Now()).Claimable)

			require.NoError(t, r.Pause(ctx, exec.ID()))
			got := peek(r, "fresh", later())
			require.False(t, got.Claimable, "Pause removed the row")
			require.Nil(t, got.NextAvailableAt)
			res, err := r.Get(ctx, exec.ID())
			require.NoError(t, err)
			require.Equal(t, TaskStatusReady, res.Task("a").Status, "the task stays Ready")

			require.NoError(t, r.Resume(ctx, exec.ID()))
			require.True(t, peek(r, "fresh", time.Now()).Claimable, "Resume put the row back, claimable at once")
			require.NoError(t, r.Start(ctx))
			res, err = exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
		})

		t.Run("Retry", func(t *testing.T) {
			var calls atomic.Int32
			wf := MustWorkflow("backoff", Task{Name: "a", Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Hour},
				Run: func(context.Context, *Context) error { calls.Add(1); return errors.New("not yet") }})
			r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
			scheduled := onEvent(r, eventOf(EventTaskRetryScheduled))
			require.NoError(t, r.Start(ctx))
			exec, err := r.ExecuteAsync(ctx, "backoff", nil)
			require.NoError(t, err)
			ev := waitFor(t, scheduled, "the retry to be scheduled")
			var data EventData
			require.NoError(t, json.Unmarshal(ev.Data, &data))
			require.NotNil(t, data.RetryAt)
			due := data.RetryAt.Truncate(time.Microsecond)
			before := peek(r, "backoff", time.Now())
			require.False(t, before.Claimable)
			require.NotNil(t, before.NextAvailableAt)
			require.Equal(t, due, before.NextAvailableAt.UTC().Truncate(time.Microsecond))

			require.NoError(t, r.Pause(ctx, exec.ID()))
			got := peek(r, "backoff", due.Add(time.Hour))
			require.False(t, got.Claimable, "Pause removed the retry's row")
			require.Nil(t, got.NextAvailableAt)

			require.NoError(t, r.Resume(ctx, exec.ID()))
			after := peek(r, "backoff", time.Now())
			require.False(t, after.Claimable, "Resume does not make a retry due early")
			require.NotNil(t, after.NextAvailableAt)
			require.Equal(t, due, after.NextAvailableAt.UTC().Truncate(time.Microsecond), "the row keeps the retry's due time")

			require.NoError(t, exec.Cancel(ctx))
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCancelled, res.Status)
			require.EqualValues(t, 1, calls.Load(), "the retry never came due")
		})
	})
}

// A paused run still ends when its running tasks leave nothing to wait
// for: the last one completing completes it, and one failing fails it
// (skipping its dependants), paused or not; Resume is then ErrRunFinished.
// Pause's doc used to leave a reader expecting the run to stay Paused.
func TestPausedRunEndsWhenItsRunningTasksEndIt(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		for _, c := range []struct {
			name string
			err  error
			want PipelineStatus
		}{
			{"completes", nil, PipelineCompleted},
			{"fails", errors.New("boom"), PipelineFailed},
		} {
			started := make(chan struct{})
			release := make(chan struct{})
			a := Task{Name: "a", Run: func(context.Context, *Context) error { close(started); <-release; return c.err }}
			// When a completes it is the run's last task; when it fails,
			// b's default rule skips b.
			wf := MustWorkflow("paused_"+c.name, a)
			if c.err != nil {
				wf = MustWorkflow("paused_"+c.name, a, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
			}
			r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
			exec, err := r.ExecuteAsync(ctx, wf.Name(), nil)
			require.NoError(t, err)
			waitFor(t, started, "task a to start")
			require.NoError(t, r.Pause(ctx, exec.ID()))
			close(release)
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, c.want, res.Status, c.name)
			require.ErrorIs(t, r.Resume(ctx, exec.ID()), ErrRunFinished, c.name)
			require.Equal(t, c.want, Replay(mustEvents(t, r, res)).Runs[res.ID], c.name)
		}
	})
}

// holdRun begins a transaction on d that holds run id's row (FOR UPDATE)
// until the test commits or rolls it back, or ends.
func holdRun(t *testing.T, d *postgres.Driver, id uuid.UUID) pgx.Tx {
	t.Helper()
	ctx := testContext(t)
	tx, err := d.Pool().Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	runs := pgx.Identifier{d.Schema()}.Sanitize() + ".pipeline_executions"
	_, err = tx.Exec(ctx, "SELECT 1 FROM "+runs+" WHERE id = $1 FOR UPDATE", id)
	require.NoError(t, err)
	return tx
}

// TestPauseDuringFirstClaimStartsTheRun: on PostgreSQL a claim skips a
// run another transaction holds and starts it after its commit. When that
// other transaction is a Pause, the claimed task runs under a paused run,
// which must still count as started: Resume used to make it Pending again
// ("no task claimed yet") after its task had run, with no start time and
// no pipeline_started in its log. (SQLite has one writer: a claim never
// meets a Pause in flight.)
func TestPauseDuringFirstClaimStartsTheRun(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	running, release := make(chan struct{}), make(chan struct{})
	wf := MustWorkflow("w",
		Task{Name: "a", Run: func(context.Context, *Context) error { close(running); <-release; return nil }},
		Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
	)
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	exec, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	d := r.Driver().(*postgres.Driver)
	pipelines := pgx.Identifier{d.Schema()}.Sanitize() + ".pipeline_executions" // as the driver's statements name it

	// Another transaction holds the run's row, so that Pause, then the
	// runner's start of the run, queue behind it in this order.
	holder := holdRun(t, d, exec.ID())
	waiters := func(n int) {
		t.Helper()
		require.Eventually(t, func() bool {
			var got int
			err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE wait_event_type = 'Lock' AND position($1 in query) > 0 AND query LIKE '%FOR UPDATE%'`, pipelines).Scan(&got)
			return err == nil && got >= n
		}, testTimeout, 5*time.Millisecond, "%d transactions waiting for the run's row", n)
	}
	paused := make(chan error, 1)
	go func() { paused <- r.Pause(ctx, exec.ID()) }()
	waiters(1)
	claimed := onEvent(r, eventOf(EventTaskClaimed))
	completed := onEvent(r, eventOf(EventTaskCompleted))
	require.NoError(t, r.Start(ctx))
	waitFor(t, claimed, "the claim of task a")
	waiters(2)
	require.NoError(t, holder.Commit(ctx))
	require.NoError(t, waitFor(t, paused, "Pause to return"))
	waitFor(t, running, "task a to run")
	close(release)
	waitFor(t, completed, "task a's completion")

	res, err := r.Get(ctx, exec.ID())
	require.NoError(t, err)
	require.Equal(t, PipelinePaused, res.Status, "paused, and b is held back")
	require.NotNil(t, res.StartedAt, "its task ran: the run has started")
	require.Equal(t, TaskStatusReady, res.Task("b").Status)
	require.Equal(t, PipelinePaused, Replay(mustEvents(t, r, res)).Runs[res.ID])

	require.NoError(t, r.Resume(ctx, exec.ID()))
	res, err = r.Get(ctx, exec.ID())
	require.NoError(t, err)
	require.NotEqual(t, PipelinePending, res.Status, "a run whose task ran is not Pending")
	final, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, final.Status)
	requireReplays(t, r, final)
	starts, err := r.Events(ctx, &EventQuery{RunID: &final.ID, Types: []EventType{EventPipelineStarted}})
	require.NoError(t, err)
	require.Len(t, starts, 1)
}

func mustEvents(t *testing.T, r *Runner, res *ExecutionResult) []*Event {
	t.Helper()
	evs, err := r.RunEvents(testContext(t), res.ID)
	require.NoError(t, err)
	return evs
}

// requireReplays checks that the run's events alone rebuild the statuses
// of res: the run's and every task's.
func requireReplays(t *testing.T, r *Runner, res *ExecutionResult) {
	t.Helper()
	replayed := Replay(mustEvents(t, r, res))
	require.Equal(t, res.Status, replayed.Runs[res.ID])
	for _, tr := range res.Tasks {
		require.Equal(t, tr.Status, replayed.Tasks[tr.ID], tr.Name)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{})
		sawCancel := make(chan error, 1)
		wf := MustWorkflow("cancellable",
			Task{Name: "long", Run: func(ctx context.Context, _ *Context) error {
				close(started)
				<-ctx.Done()
				sawCancel <- context.Cause(ctx)
				return ctx.Err()
			}},
			Task{Name: "next", DependsOn: []string{"long"}, Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		exec, err := r.ExecuteAsync(ctx, "cancellable", nil)
		require.NoError(t, err)
		waitFor(t, started, "the long task to start")
		longFailed := onEvent(r, eventOf(EventTaskFailed))

		resCh := make(chan *ExecutionResult, 1)
		go func() {
			res, err := exec.Wait(ctx)
			if err == nil {
				resCh <- res
			}
			close(resCh)
		}()
		require.NoError(t, exec.Cancel(ctx))
		require.NoError(t, exec.Cancel(ctx), "cancelling twice is a no-op")
		res := waitFor(t, resCh, "Wait to return")
		require.NotNil(t, res)
		require.Equal(t, PipelineCancelled, res.Status, "Execute/Wait returns for Cancelled")
		require.ErrorContains(t, res.Err(), "cancelled")
		require.ErrorIs(t, waitFor(t, sawCancel, "the running task's context to be cancelled"), errRunCancelled)
		require.Equal(t, TaskStatusSkipped, res.Task("next").Status)
		require.Equal(t, "run cancelled", res.Task("next").Error)

		waitFor(t, longFailed, "the cancelled task's outcome to be recorded")
		after, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, TaskStatusFailed, after.Task("long").Status)
		require.Equal(t, PipelineCancelled, after.Status)

		err = r.Pause(ctx, exec.ID())
		require.ErrorIs(t, err, ErrRunFinished)
		replayed := Replay(mustEvents(t, r, after))
		require.Equal(t, PipelineCancelled, replayed.Runs[after.ID])
		for _, tr := range after.Tasks {
			require.Equal(t, tr.Status, replayed.Tasks[tr.ID])
		}
	})
}

// A task claimed just before its run is cancelled, whose goroutine
// begins after Cancel returned, is not called at all: its context is
// cancelled from the start, not at the next check of the watch loop (an
// hour away here), and a function is not begun on a cancelled context.
// (It used to be called, with its context cancelled already.)
func TestCancelReachesATaskClaimedJustBefore(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		entry := make(chan error, 1)
		wf := MustWorkflow("w", Task{Name: "slow", Run: func(ctx context.Context, _ *Context) error {
			entry <- context.Cause(ctx)
			<-ctx.Done()
			return ctx.Err()
		}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
		exec, err := r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		var once sync.Once
		prev := r.commitHook.Load()
		hook := func(c *changes) {
			if prev != nil {
				(*prev)(c)
			}
			for _, e := range c.cs.Events {
				if e.Type == EventTaskClaimed {
					// After the claim's commit, before the task's goroutine.
					once.Do(func() { require.NoError(t, r.Cancel(ctx, exec.ID())) })
				}
			}
		}
		r.commitHook.Store(&hook)
		require.NoError(t, r.Start(ctx))
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
		require.NoError(t, r.Stop(ctx)) // returns once the task's goroutine has
		select {
		case cause := <-entry:
			t.Fatalf("the task was called after its run was cancelled (its context's cause: %v)", cause)
		default:
		}
		got, err := r.Get(ctx, res.ID)
		require.NoError(t, err)
		task := got.Task("slow")
		require.NotNil(t, task)
		require.Equal(t, driver.TaskFailed, task.Status)
		require.Equal(t, "not begun: run cancelled (context canceled)", task.Error)
	})
}

func TestCancelFinishedRunIsAnError(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "w", nil)
		require.NoError(t, err)
		require.ErrorIs(t, r.Cancel(testContext(t), res.ID), ErrRunFinished)
		require.ErrorIs(t, r.Resume(testContext(t), res.ID), ErrRunFinished)
		require.ErrorIs(t, r.Cancel(testContext(t), newID()), ErrRunNotFound)
		_, err = r.Get(testContext(t), newID())
		require.ErrorIs(t, err, ErrRunNotFound)
	})
}

func TestGetAndList(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("listed", Task{Name: "a", Run: ok})
		bad := MustWorkflow("bad", Task{Name: "a", Run: fail("x")})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf, bad}})
		var ids []string
		for range 3 {
			res, err := r.Execute(ctx, "listed", nil)
			require.NoError(t, err)
			ids = append(ids, res.ID.String())
		}
		failed, err := r.Execute(ctx, "bad", nil)
		require.NoError(t, err)

		all, err := r.List(ctx, nil)
		require.NoError(t, err)
		require.Len(t, all, 4)
		require.Equal(t, failed.ID, all[0].ID, "newest first")

		onlyFailed, err := r.List(ctx, &ListOpts{Statuses: []PipelineStatus{PipelineFailed}})
		require.NoError(t, err)
		require.Len(t, onlyFailed, 1)
		require.Equal(t, "bad", onlyFailed[0].Workflow)

		page1, err := r.List(ctx, &ListOpts{Workflow: "listed", Limit: 2})
		require.NoError(t, err)
		page2, err := r.List(ctx, &ListOpts{Workflow: "listed", Limit: 2, After: page1[1]})
		require.NoError(t, err)
		require.Len(t, page1, 2)
		require.Len(t, page2, 1)
		got := []string{page2[0].ID.String(), page1[1].ID.String(), page1[0].ID.String()}
		require.Equal(t, ids, got)

		res, err := r.Get(ctx, failed.ID)
		require.NoError(t, err)
		require.Equal(t, bad.Version(), res.WorkflowVersion)
		require.NotNil(t, res.StartedAt)
		require.NotNil(t, res.CompletedAt)
		require.Positive(t, res.Duration)
		require.Equal(t, 1, res.Task("a").Attempts)
		require.True(t, strings.HasPrefix(res.Error, `task "a" failed`))
	})
}

// An output the database refuses fails the attempt with the reason instead
// of leaving the task Running. Context.Set never yields text PostgreSQL
// refuses (it encodes strings as valid UTF-8); the task here writes a
// byte that is not UTF-8 past it, as a stand-in for anything else a
// database refuses.
func TestUnstorableOutputFailsTheTask(t *testing.T) {
	t.Parallel()
	wf := MustWorkflow("nul", Task{Name: "a", Run: func(_ context.Context, c *Context) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.values["bytes"] = json.RawMessage("\"a\xffb\"")
		return nil
	}}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
	r := startRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	res, err := r.Execute(testContext(t), "nul", nil)
	require.NoError(t, err)
	require.Equal(t, PipelineFailed, res.Status)
	require.Contains(t, res.Task("a").Error, "could not record the task's output")
	require.Equal(t, TaskStatusSkipped, res.Task("b").Status)
}

// A runner whose workflow changed under the same name completes a task of
// a run started under the old shape: the run fails with a reason that says
// so, instead of the runner panicking (a task renamed) or the result being
// held forever (a task added). Runs of the new shape are not affected.
func TestRunOfAChangedWorkflowFailsClearly(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		v2   *Workflow
		diff string // how the message says the shapes differ
	}{
		"renamed": {MustWorkflow("wf", Task{Name: "x", Run: ok}, Task{Name: "b", DependsOn: []string{"x"}, Run: ok}),
			`, without the run's tasks ["a"], with tasks ["x"] the run lacks): `},
		"added": {MustWorkflow("wf", Task{Name: "a", Run: ok}, Task{Name: "c", DependsOn: []string{"a"}, Run: ok},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok}), `, with tasks ["c"] the run lacks): `},
	} {
		v2 := tc.v2
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				ctx := testContext(t)
				v1 := MustWorkflow("wf", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
				old := openRunner(t, url, &Config{Workflows: []*Workflow{v1}}) // starts the run, never works
				exec, err := old.ExecuteAsync(ctx, "wf", nil)
				require.NoError(t, err)
				r := startRunner(t, url, &Config{Workflows: []*Workflow{v2}})
				res, err := exec.Wait(ctx)
				require.NoError(t, err)
				require.Equal(t, PipelineFailed, res.Status)
				require.ErrorContains(t, res.Err(), `workflow "wf" changed under its name since this run started`)
				require.ErrorContains(t, res.Err(), tc.diff)
				require.NotContains(t, res.Err().Error(), "[]", "an empty list of tasks named")
				require.Equal(t, TaskStatusSkipped, res.Task("b").Status)
				for _, tr := range res.Tasks {
					require.True(t, tr.Status.Terminal(), "task %s is %s", tr.Name, tr.Status)
				}
				requireReplays(t, r, res)

				fresh, err := r.Execute(ctx, "wf", nil)
				require.NoError(t, err)
				require.Equal(t, PipelineCompleted, fresh.Status, "runs of the runner's own shape go on")
			})
		})
	}
}

// ListOpts.Since and Until select runs by creation time; an empty range
// is refused with the fix.
func TestListBetweenTimes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("listed", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		first, err := r.Execute(ctx, "listed", nil)
		require.NoError(t, err)
		second, err := r.Execute(ctx, "listed", nil)
		require.NoError(t, err)
		require.True(t, second.CreatedAt.After(first.CreatedAt))

		got, err := r.List(ctx, &ListOpts{Since: second.CreatedAt})
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, second.ID, got[0].ID, "since is inclusive")
		got, err = r.List(ctx, &ListOpts{Until: second.CreatedAt})
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, first.ID, got[0].ID, "until is exclusive")
		got, err = r.List(ctx, &ListOpts{Since: first.CreatedAt, Until: second.CreatedAt.Add(time.Microsecond), Limit: 1})
		require.NoError(t, err)
		require.Equal(t, second.ID, got[0].ID)
		got, err = r.List(ctx, &ListOpts{Since: first.CreatedAt, Limit: 1, After: got[0]})
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, first.ID, got[0].ID, "paging within the range")

		_, err = r.List(ctx, &ListOpts{Since: second.CreatedAt, Until: first.CreatedAt})
		require.ErrorContains(t, err, "is not before Until")
	})
}

// failLockDriver fails the next PipelineLock of a transaction once armed.
type failLockDriver struct {
	armed atomic.Bool
}

type failLockTx struct {
	driver.Tx
	d *failLockDriver
}

func (tx *failLockTx) PipelineLock(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	if tx.d.armed.CompareAndSwap(true, false) {
		return nil, errors.New("refused by the test")
	}
	return tx.Tx.PipelineLock(ctx, ids)
}

// When the deferred start of a run paused as its first task was claimed
// fails too (it is only logged), Resume starts the run: a run whose task
// was claimed does not go back to Pending.
func TestResumeStartsARunWhoseDeferredStartFailed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	running, release := make(chan struct{}), make(chan struct{})
	wf := MustWorkflow("w",
		Task{Name: "a", Run: func(context.Context, *Context) error { close(running); <-release; return nil }},
		Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
	)
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	d := r.Driver().(*postgres.Driver)
	fd := &failLockDriver{}
	r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &failLockTx{Tx: tx, d: fd} })
	exec, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	holder := holdRun(t, d, exec.ID())

	// The claim skips the held run; its deferred start then fails.
	claimed := onEvent(r, eventOf(EventTaskClaimed))
	hook := r.commitHook.Load()
	armed := func(c *changes) {
		(*hook)(c)
		for _, e := range c.cs.Events {
			if e.Type == EventTaskClaimed {
				fd.armed.Store(true)
			}
		}
	}
	r.commitHook.Store(&armed)
	completed := onEvent(r, eventOf(EventTaskCompleted))
	require.NoError(t, r.Start(ctx))
	waitFor(t, claimed, "the claim of task a")
	require.NoError(t, holder.Rollback(ctx))
	waitFor(t, running, "task a to run")
	require.NoError(t, r.Pause(ctx, exec.ID()))
	close(release)
	waitFor(t, completed, "task a's completion")
	res, err := r.Get(ctx, exec.ID())
	require.NoError(t, err)
	require.Nil(t, res.StartedAt, "the deferred start failed")
	require.Equal(t, PipelinePaused, res.Status)

	require.NoError(t, r.Resume(ctx, exec.ID()))
	res, err = r.Get(ctx, exec.ID())
	require.NoError(t, err)
	require.NotEqual(t, PipelinePending, res.Status, "a run whose task ran is not Pending")
	require.NotNil(t, res.StartedAt)
	final, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, final.Status)
	requireReplays(t, r, final)
}
