package cloacina_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cloacina-go/cloacina"
)

// ExecuteAsync returns a handle at once; Cancel stops the run, cancelling
// the context of its running task, and Wait returns the Cancelled result.
func ExampleExecution_Cancel() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	started := make(chan struct{})
	wf := cloacina.MustWorkflow("long",
		cloacina.Task{Name: "wait_for_input", Run: func(ctx context.Context, _ *cloacina.Context) error {
			close(started)
			<-ctx.Done() // a well-behaved task returns when its context ends
			return ctx.Err()
		}},
		cloacina.Task{Name: "process", DependsOn: []string{"wait_for_input"}, Run: func(context.Context, *cloacina.Context) error { return nil }},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	run, err := runner.ExecuteAsync(ctx, "long", nil)
	if err != nil {
		log.Fatal(err)
	}
	<-started
	if err := run.Cancel(ctx); err != nil {
		log.Fatal(err)
	}
	result, err := run.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(result.Status)
	fmt.Println(result.Task("process").Status, "-", result.Task("process").Error)
	// Output:
	// cancelled
	// skipped - run cancelled
}

// Pause holds back a run's queued tasks; Resume releases them.
func ExampleRunner_Pause() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("batch",
		cloacina.Task{Name: "a", Run: noop},
		cloacina.Task{Name: "b", DependsOn: []string{"a"}, Run: noop},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()

	// Not started yet, so nothing runs until we say so.
	run, err := runner.ExecuteAsync(ctx, "batch", nil)
	if err != nil {
		log.Fatal(err)
	}
	_ = runner.Pause(ctx, run.ID())
	_ = runner.Start(ctx)
	status, _ := run.Status(ctx)
	fmt.Println(status)

	_ = runner.Resume(ctx, run.ID())
	result, err := run.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(result.Status)
	// Output:
	// paused
	// completed
}
