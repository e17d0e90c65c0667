package cloacina

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func problems(t *testing.T, err error) []string {
	t.Helper()
	require.ErrorIs(t, err, ErrInvalidWorkflow)
	var verr *ValidationError
	require.True(t, errors.As(err, &verr))
	return verr.Problems
}

func TestNewWorkflowValidation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		wf    string
		tasks []Task
		want  string
	}{
		{"empty workflow", "w", nil, "the workflow has no tasks: add at least one Task"},
		{"empty name", "", []Task{{Name: "a", Run: ok}}, "the workflow name is empty"},
		{"NUL in the workflow name", "w\x00", []Task{{Name: "a", Run: ok}}, `the workflow name "w\x00" contains a NUL character`},
		{"task name not UTF-8", "w", []Task{{Name: "a\xff", Run: ok}}, `task name "a\xff" is not valid UTF-8, which PostgreSQL cannot store`},
		{"task without name", "w", []Task{{Run: ok}}, "task #1 has no name: set Task.Name"},
		{"workflow name too long", strings.Repeat("w", maxNameBytes+1), []Task{{Name: "a", Run: ok}},
			`the workflow name "` + strings.Repeat("w", 60) + `"… is 1025 bytes long: use a name of at most 1024 bytes`},
		{"task name too long", "w", []Task{{Name: strings.Repeat("é", 600), Run: ok}},
			`task name "` + strings.Repeat("é", 30) + `"… is 1200 bytes long: use a name of at most 1024 bytes`},
		{"task without function", "w", []Task{{Name: "a"}}, `task "a" has no function: set Task.Run`},
		{"duplicate name", "w", []Task{{Name: "a", Run: ok}, {Name: "a", Run: ok}},
			`task name "a" is used twice (tasks #1 and #2): give each task a unique name`},
		{"missing dependency with suggestion", "w", []Task{{Name: "extract", Run: ok}, {Name: "load", Run: ok, DependsOn: []string{"extrct"}}},
			`task "load" depends on "extrct", which is not a task of this workflow: did you mean "extract"?`},
		{"missing dependency without suggestion", "w", []Task{{Name: "a", Run: ok, DependsOn: []string{"zzzzzzzz"}}},
			`declare it or fix the name (tasks: a)`},
		{"self dependency", "w", []Task{{Name: "a", Run: ok, DependsOn: []string{"a"}}}, `task "a" depends on itself`},
		{"duplicate dependency", "w", []Task{{Name: "a", Run: ok}, {Name: "b", Run: ok, DependsOn: []string{"a", "a"}}},
			`task "b" lists dependency "a" twice`},
		{"cycle", "w", []Task{
			{Name: "a", Run: ok, DependsOn: []string{"c"}},
			{Name: "b", Run: ok, DependsOn: []string{"a"}},
			{Name: "c", Run: ok, DependsOn: []string{"b"}},
		}, "dependency cycle a → b → c → a: remove one of these dependencies"},
		{"trigger names a non-upstream task", "w", []Task{
			{Name: "a", Run: ok}, {Name: "b", Run: ok}, {Name: "c", Run: ok, DependsOn: []string{"a"}, Trigger: Any(TaskFailed("b"))},
		}, `task "c" has a trigger condition task_failed("b") naming a task that is not upstream of "c": add "b" to its dependencies`},
		{"empty condition list", "w", []Task{{Name: "a", Run: ok}, {Name: "b", Run: ok, DependsOn: []string{"a"}, Trigger: All()}},
			"with no conditions: add conditions, or use Always()"},
		{"unknown operator", "w", []Task{{Name: "a", Run: ok, Trigger: All(ContextValue("k", "eq", 1))}},
			`unknown operator "eq": use one of equals, not_equals, greater_than, less_than, contains, not_contains, exists, not_exists`},
		{"non-JSON condition value", "w", []Task{{Name: "a", Run: ok, Trigger: All(ContextValue("k", OpEquals, func() {}))}},
			"cannot be encoded as JSON"},
		{"zero condition", "w", []Task{{Name: "a", Run: ok, Trigger: All(Condition{})}}, "zero Condition"},
		{"negative timeout", "w", []Task{{Name: "a", Run: ok, Timeout: -time.Second}}, "negative Timeout"},
		{"negative attempts", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{MaxAttempts: -1}}}, "MaxAttempts -1: use 1 or more"},
		{"too many attempts", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{MaxAttempts: math.MaxInt32 + 2}}}, "MaxAttempts 2147483649: use at most 2147483647"},
		{"max delay below initial", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{InitialDelay: time.Minute, MaxDelay: time.Second}}},
			"MaxDelay 1s below InitialDelay 1m0s"},
		{"jitter out of range", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{Jitter: 1.5}}}, "Jitter 1.5: use a fraction between 0 and 1"},
		{"multiplier NaN", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{Multiplier: math.NaN()}}}, "Multiplier NaN"},
		{"multiplier infinite", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{Multiplier: math.Inf(1)}}}, "Multiplier +Inf"},
		{"multiplier below one", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{Multiplier: 0.5}}}, "Multiplier 0.5"},
		{"bad pattern", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{RetryOn: []RetryCondition{RetryOnPattern("(")}}}},
			`retry pattern "(" that is not a valid regular expression`},
		{"pattern list empty", "w", []Task{{Name: "a", Run: ok, Retry: &RetryPolicy{RetryOn: []RetryCondition{RetryOnPattern()}}}},
			"RetryOnPattern() without patterns"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewWorkflow(tc.wf, tc.tasks...)
			require.Error(t, err)
			ps := problems(t, err)
			found := false
			for _, p := range ps {
				if strings.Contains(p, tc.want) {
					found = true
				}
			}
			require.True(t, found, "problems %q do not mention %q", ps, tc.want)
		})
	}
}

func TestNewWorkflowReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := NewWorkflow("w", Task{Name: "a"}, Task{Name: "b", Run: ok, DependsOn: []string{"nope"}})
	ps := problems(t, err)
	require.Len(t, ps, 2)
	require.Contains(t, err.Error(), "2 problems")
}

// A problem of one task does not hide those of the graph (a cycle) or of
// trigger rules; only whether a rule's task is upstream is left unchecked
// while the graph has a cycle or an unknown dependency.
func TestNewWorkflowReportsGraphAndRuleProblemsBesideTaskProblems(t *testing.T) {
	t.Parallel()
	_, err := NewWorkflow("w",
		Task{Name: "a"}, // no function
		Task{Name: "b", Run: ok, DependsOn: []string{"c"}},
		Task{Name: "c", Run: ok, DependsOn: []string{"b"}, Trigger: Any(TaskFailed("a"))},
		Task{Name: "d", Run: ok, Trigger: All(ContextValue("k", "eq", 1))},
	)
	ps := problems(t, err)
	require.Len(t, ps, 3, "%q", ps)
	require.Contains(t, ps[0], `task "a" has no function`)
	require.Contains(t, ps[1], "dependency cycle")
	require.Contains(t, ps[2], `unknown operator "eq"`)

	_, err = NewWorkflow("w",
		Task{Name: "a", Run: ok},
		Task{Name: "b", Run: ok, DependsOn: []string{"x"}, Trigger: Any(TaskFailed("a"), TaskSuccess("x"))},
	)
	ps = problems(t, err)
	require.Len(t, ps, 1, "the rule's tasks are not judged against a graph with an unknown dependency: %q", ps)
	require.Contains(t, ps[0], `task "b" depends on "x"`)
}

func TestTriggerMayNameATransitiveAncestor(t *testing.T) {
	t.Parallel()
	_, err := NewWorkflow("w",
		Task{Name: "a", Run: ok},
		Task{Name: "b", Run: ok, DependsOn: []string{"a"}},
		Task{Name: "c", Run: ok, DependsOn: []string{"b"}, Trigger: Any(TaskFailed("a"), TaskSuccess("b"))},
	)
	require.NoError(t, err)
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	build := func(tasks ...Task) string {
		wf, err := NewWorkflow("w", tasks...)
		require.NoError(t, err)
		return wf.Version()
	}
	base := build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}})
	require.Len(t, base, 64)
	// Functions are not part of the shape.
	require.Equal(t, base, build(Task{Name: "a", Run: setKey("x", 1)}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}}))
	// Names, edges, rules, retry policies and timeouts are.
	for name, other := range map[string]string{
		"name":    build(Task{Name: "a", Run: ok}, Task{Name: "c", Run: ok, DependsOn: []string{"a"}}),
		"edge":    build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok}),
		"rule":    build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}, Trigger: Always()}),
		"retry":   build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}, Retry: &RetryPolicy{MaxAttempts: 2}}),
		"timeout": build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}, Timeout: time.Second}),
		"value": build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"},
			Trigger: All(ContextValue("k", OpEquals, 1))}),
	} {
		require.NotEqual(t, base, other, name)
	}
	require.NotEqual(t,
		build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, Trigger: All(ContextValue("k", OpEquals, 1))}),
		build(Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, Trigger: All(ContextValue("k", OpEquals, 2))}))
}

func TestWorkflowAccessors(t *testing.T) {
	t.Parallel()
	wf := MustWorkflow("w", Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}})
	require.Equal(t, "w", wf.Name())
	require.Equal(t, []string{"a", "b"}, wf.TaskNames())
	require.Equal(t, []string{"a"}, wf.Dependencies("b"))
	require.Nil(t, wf.Dependencies("zz"))
	require.Panics(t, func() { MustWorkflow("w") })
}

// largeChain returns a chain of n tasks (each with every task before it
// upstream) and, when ruled, trigger rules naming its first task.
func largeChain(n int, ruled bool) []Task {
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = Task{Name: fmt.Sprintf("t%d", i), Run: ok}
		if i > 0 {
			tasks[i].DependsOn = []string{fmt.Sprintf("t%d", i-1)}
		}
		if ruled && i > 1 {
			tasks[i].Trigger = Any(TaskSuccess(fmt.Sprintf("t%d", i-1)), TaskFailed("t0"))
		}
	}
	return tasks
}

// misspeltChain returns a chain of n tasks whose every dependency names a
// task that does not exist, after the pattern dep ("step-%d" for
// "step_%d", say).
func misspeltChain(n int, dep string) []Task {
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = Task{Name: fmt.Sprintf("step_%d", i), Run: ok}
		if i > 0 {
			tasks[i].DependsOn = []string{fmt.Sprintf(dep, i-1)}
		}
	}
	return tasks
}

// A chain of 10,000 tasks, with trigger rules naming its first task or
// without, validates. Its cost is BenchmarkNewWorkflow's: the ancestry of
// every task, built in full, took time in the square of the chain's
// length (seconds at 10,000).
func TestLargeWorkflowValidates(t *testing.T) {
	t.Parallel()
	const n = 10_000
	for _, ruled := range []bool{false, true} {
		wf, err := NewWorkflow("big", largeChain(n, ruled)...)
		require.NoError(t, err)
		require.Len(t, wf.TaskNames(), n)
	}
}

// Validating takes time in proportion to the workflow's size: ns/op at
// 10,000 tasks is about ten times that at 1,000, for a valid chain (with
// trigger rules or without) and for one whose every dependency is
// misspelt. Quadratic work (each task's ancestry built in full; each
// unknown dependency compared with every task name) shows as a hundred.
func BenchmarkNewWorkflow(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		for _, c := range []struct {
			name  string
			tasks []Task
			valid bool
		}{
			{"chain", largeChain(n, false), true},
			{"ruled", largeChain(n, true), true},
			{"misspelt", misspeltChain(n, "step-%d"), false},
		} {
			b.Run(fmt.Sprintf("%s/n=%d", c.name, n), func(b *testing.B) {
				for b.Loop() {
					if _, err := NewWorkflow("big", c.tasks...); (err == nil) != c.valid {
						b.Fatalf("NewWorkflow: %v", err)
					}
				}
			})
		}
	}
}

// A large workflow whose dependencies are all misspelt (generated names,
// "step-1" for "step_1") is refused with every problem, each message of
// bounded size. Each unknown dependency used to be compared with every
// task name, and a message without a suggestion listed every task: at
// 10,000 tasks, half a minute and a gigabyte (BenchmarkNewWorkflow
// measures the time).
func TestLargeWorkflowWithUnknownDependenciesIsRefused(t *testing.T) {
	t.Parallel()
	const n = 10_000
	for name, dep := range map[string]string{"close": "step-%d", "far": "completely-other-%d"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := NewWorkflow("big", misspeltChain(n, dep)...)
			ps := problems(t, err)
			require.Len(t, ps, n-1, "every unknown dependency is reported")
			for _, p := range ps {
				require.Less(t, len(p), 1000, "a problem of bounded size: %.200s…", p)
			}
			if name == "close" {
				require.Equal(t, `task "step_1" depends on "step-0", which is not a task of this workflow: did you mean "step_0"?`, ps[0])
			}
		})
	}
}
