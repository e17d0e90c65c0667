package cloacinatest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/cloacinatest"
)

// Test a task function alone: here, that it retries a failing call and
// then gives up with the call's own error.
func ExampleRunTask() {
	t, done := exampleT() // in a test: the test's *testing.T
	defer done()

	errDown := errors.New("payments API is down")
	charge := cloacina.Task{
		Name:  "charge",
		Retry: &cloacina.RetryPolicy{MaxAttempts: 2, Backoff: cloacina.BackoffFixed, InitialDelay: time.Millisecond},
		Run: func(ctx context.Context, tc *cloacina.Context) error {
			return errDown
		},
	}
	input, _ := cloacina.ContextFrom(map[string]any{"order": 42})

	run := cloacinatest.RunTask(t, charge, input)
	fmt.Println(run)
	fmt.Println(errors.Is(run.Err, errDown))
	for _, e := range run.Events {
		fmt.Println(e.Type)
	}
	// Output:
	// failed after 2 attempt(s): payments API is down
	// true
	// task_created
	// task_marked_ready
	// task_claimed
	// task_started
	// task_retry_scheduled
	// task_claimed
	// task_started
	// task_failed
}

// Run a whole workflow in a test, on a SQLite file of the test's own.
func ExampleOpen() {
	t, done := exampleT() // in a test: the test's *testing.T
	defer done()

	wf := cloacina.MustWorkflow("signup",
		cloacina.Task{Name: "create_user", Run: func(ctx context.Context, tc *cloacina.Context) error {
			return tc.Set("user_id", 7)
		}},
		cloacina.Task{Name: "send_welcome", DependsOn: []string{"create_user"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			id, err := cloacina.Get[int](tc, "user_id")
			if err != nil {
				return err
			}
			return tc.Set("mailed", fmt.Sprintf("user %d", id))
		}},
	)
	runner := cloacinatest.Open(t, &cloacina.Config{Workflows: []*cloacina.Workflow{wf}})

	result, err := runner.Execute(t.Context(), "signup", nil)
	if err != nil {
		t.Fatalf("execute: %v", err)
	}
	mailed, _ := cloacina.Get[string](result.Context, "mailed")
	fmt.Println(result.Status, mailed)
	// Output: completed user 7
}
