package cloacina_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cloacina-go/cloacina"
)

// What a task received and what it produced, read back from the database
// after the run: the first place to look when a task did not do what was
// expected of it.
func ExampleRunner_GetTask() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	wf := cloacina.MustWorkflow("prices",
		cloacina.Task{Name: "load", Run: func(ctx context.Context, tc *cloacina.Context) error {
			return tc.Set("cents", []int{250, 199})
		}},
		cloacina.Task{Name: "total", DependsOn: []string{"load"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			cents, err := cloacina.Get[[]int](tc, "cents")
			if err != nil {
				return err
			}
			return tc.Set("total", cents[0]+cents[1])
		}},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	input, _ := cloacina.ContextFrom(map[string]any{"currency": "EUR"})
	result, err := runner.Execute(ctx, "prices", input)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("run input:", result.Input)
	task, err := runner.GetTask(ctx, result.Task("total").ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(task.Name, task.Status, task.Attempts, "of", task.MaxAttempts)
	fmt.Println("received:", task.Input)
	fmt.Println("produced:", task.Output)
	// Output:
	// run input: {"currency":"EUR"}
	// total completed 1 of 1
	// received: {"cents":[250,199],"currency":"EUR"}
	// produced: {"cents":[250,199],"currency":"EUR","total":449}
}

// How far behind the runners are: tasks waiting for a claim, and since
// when, per workflow. Here no runner is started, so the run's first task
// waits.
func ExampleRunner_Backlog() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	wf := cloacina.MustWorkflow("nightly",
		cloacina.Task{Name: "export", Run: func(ctx context.Context, tc *cloacina.Context) error { return nil }},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	if _, err := runner.ExecuteAsync(ctx, "nightly", nil); err != nil { // not started: it only submits
		log.Fatal(err)
	}

	backlog, err := runner.Backlog(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, b := range backlog {
		waited := time.Since(*b.OldestReadyAt)
		fmt.Printf("%s: %d ready (the oldest waiting under a minute: %t), %d running, %d pending runs\n",
			b.Workflow, b.Ready, waited < time.Minute, b.Running, b.PendingRuns)
	}
	// Output:
	// nightly: 1 ready (the oldest waiting under a minute: true), 0 running, 1 pending runs
}
