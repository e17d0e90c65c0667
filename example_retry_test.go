package cloacina_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cloacina-go/cloacina"
)

// A task that fails twice and succeeds on its third attempt. MaxAttempts
// counts every attempt: 3 means one try and two retries.
func ExampleRetryPolicy() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	calls := 0
	wf := cloacina.MustWorkflow("flaky",
		cloacina.Task{
			Name: "call_api",
			Retry: &cloacina.RetryPolicy{
				MaxAttempts:  3,
				Backoff:      cloacina.BackoffExponential,
				InitialDelay: 10 * time.Millisecond,
				MaxDelay:     time.Second,
				RetryOn:      []cloacina.RetryCondition{cloacina.RetryTransient()},
			},
			Run: func(ctx context.Context, tc *cloacina.Context) error {
				calls++
				if calls < 3 {
					return cloacina.Transient(errors.New("503 service unavailable"))
				}
				return tc.Set("status", 200)
			},
		},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	result, err := runner.Execute(ctx, "flaky", nil)
	if err != nil {
		log.Fatal(err)
	}
	task := result.Task("call_api")
	fmt.Println(result.Status, task.Attempts)
	events, _ := runner.Events(ctx, &cloacina.EventQuery{TaskID: &task.ID, Types: []cloacina.EventType{cloacina.EventTaskRetryScheduled}})
	for _, e := range events {
		data, _ := e.Payload()
		fmt.Printf("attempt %d failed (%s), retry in %dms\n", data.Attempt, data.Error, *data.DelayMS)
	}
	// Output:
	// completed 3
	// attempt 1 failed (503 service unavailable), retry in 10ms
	// attempt 2 failed (503 service unavailable), retry in 20ms
}
