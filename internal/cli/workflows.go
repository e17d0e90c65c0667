package cli

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/dag"
)

// builtinWorkflows are the workflows `cloacina run` can execute, by name.
// Each call builds a fresh workflow, so per-process state in task closures
// is never shared between invocations.
var builtinWorkflows = map[string]func() *cloacina.Workflow{
	"demo": demoWorkflow,
}

func builtinNames() []string {
	names := make([]string, 0, len(builtinWorkflows))
	for n := range builtinWorkflows {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// lookupWorkflow returns the built-in workflow called name, or an error
// suggesting the closest name.
func lookupWorkflow(name string) (*cloacina.Workflow, error) {
	if build, ok := builtinWorkflows[name]; ok {
		return build(), nil
	}
	names := builtinNames()
	if s := dag.Closest(name, names); s != "" {
		return nil, fmt.Errorf("unknown workflow %q: did you mean %q?", name, s)
	}
	return nil, fmt.Errorf("unknown workflow %q: the built-in workflows are %s", name, strings.Join(names, ", "))
}

// Demo workflow timing: short enough that the whole demo takes well under
// a second, long enough that the timeline shows the branches overlapping
// and the retry waiting.
const (
	demoRetryDelay = 100 * time.Millisecond
	demoDefaultN   = 5
	demoMaxN       = 10000
)

// demoWorkflow is a diamond, fetch → {transform_a, transform_b} → merge,
// whose transform_b fails its first attempt with a transient error and
// succeeds on the retry. Input: optional "n", the number of records.
func demoWorkflow() *cloacina.Workflow {
	return cloacina.MustWorkflow("demo",
		cloacina.Task{Name: "fetch", Run: func(ctx context.Context, tc *cloacina.Context) error {
			n := demoDefaultN
			if tc.Has("n") {
				var err error
				if n, err = cloacina.Get[int](tc, "n"); err != nil {
					return cloacina.Permanent(fmt.Errorf("input n: %w: pass a whole number, e.g. --input '{\"n\":3}'", err))
				}
			}
			if n < 1 || n > demoMaxN {
				return cloacina.Permanent(fmt.Errorf("input n is %d: pass a number of records between 1 and %d", n, demoMaxN))
			}
			if err := work(ctx, 40*time.Millisecond); err != nil {
				return err
			}
			records := make([]int, n)
			for i := range records {
				records[i] = i + 1
			}
			return errors.Join(tc.Set("n", n), tc.Set("records", records))
		}},
		cloacina.Task{Name: "transform_a", DependsOn: []string{"fetch"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			records, err := cloacina.Get[[]int](tc, "records")
			if err != nil {
				return cloacina.Permanent(err)
			}
			if err := work(ctx, 60*time.Millisecond); err != nil {
				return err
			}
			sum := 0
			for _, r := range records {
				sum += r
			}
			return tc.Set("sum", sum)
		}},
		cloacina.Task{Name: "transform_b", DependsOn: []string{"fetch"},
			Retry: &cloacina.RetryPolicy{MaxAttempts: 3, Backoff: cloacina.BackoffFixed, InitialDelay: demoRetryDelay,
				RetryOn: []cloacina.RetryCondition{cloacina.RetryTransient()}},
			Run: func(ctx context.Context, tc *cloacina.Context) error {
				records, err := cloacina.Get[[]int](tc, "records")
				if err != nil {
					return cloacina.Permanent(err)
				}
				if err := work(ctx, 30*time.Millisecond); err != nil {
					return err
				}
				// The first attempt fails, whichever runner (or process) takes it.
				if info, _ := cloacina.TaskInfoFrom(ctx); info.Attempt == 1 {
					return cloacina.Transient(errors.New("upstream timed out (simulated)"))
				}
				squares := 0
				for _, r := range records {
					squares += r * r
				}
				return tc.Set("sum_of_squares", squares)
			}},
		cloacina.Task{Name: "merge", DependsOn: []string{"transform_a", "transform_b"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			n, err1 := cloacina.Get[int](tc, "n")
			sum, err2 := cloacina.Get[int](tc, "sum")
			squares, err3 := cloacina.Get[int](tc, "sum_of_squares")
			if err := errors.Join(err1, err2, err3); err != nil {
				return cloacina.Permanent(err)
			}
			if err := work(ctx, 20*time.Millisecond); err != nil {
				return err
			}
			mean := float64(sum) / float64(n)
			tc.Delete("records") // the summary is the result; the raw records would swamp it
			return errors.Join(tc.Set("mean", mean), tc.Set("variance", float64(squares)/float64(n)-mean*mean))
		}},
	)
}

// work stands in for a task's real work.
func work(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
