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

// A task can run a sub-workflow and wait for it: while it waits in
// Execute it gives its concurrency slot back, so the child's tasks run
// even on a runner with a single slot, and the audit log records the wait
// (task_deferred, then task_resumed).
func ExampleRunner_Execute_childRun() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	var runner *cloacina.Runner
	render := cloacina.MustWorkflow("render",
		cloacina.Task{Name: "count_pages", Run: func(_ context.Context, tc *cloacina.Context) error {
			region, err := cloacina.Get[string](tc, "region")
			if err != nil {
				return err
			}
			return tc.Set("pages", len(region)+1)
		}},
	)
	report := cloacina.MustWorkflow("report",
		cloacina.Task{Name: "render_regions", Run: func(ctx context.Context, tc *cloacina.Context) error {
			total := 0
			for _, region := range []string{"eu", "apac"} {
				in := cloacina.NewContext()
				if err := in.Set("region", region); err != nil {
					return err
				}
				// Pass the task's own context: that is how Execute knows a
				// task is waiting.
				child, err := runner.Execute(ctx, "render", in)
				if err != nil {
					return err
				}
				if err := child.Err(); err != nil {
					return err
				}
				pages, err := cloacina.Get[int](child.Context, "pages")
				if err != nil {
					return err
				}
				total += pages
			}
			return tc.Set("pages", total)
		}},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows:          []*cloacina.Workflow{report, render},
		MaxConcurrentTasks: 1,
		Logger:             slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	result, err := runner.Execute(ctx, "report", nil)
	if err != nil {
		log.Fatal(err)
	}
	pages, _ := cloacina.Get[int](result.Context, "pages")
	fmt.Println(result.Status, pages, "pages")
	events, err := runner.TaskEvents(ctx, result.Task("render_regions").ID)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range events {
		if e.Type == cloacina.EventTaskDeferred || e.Type == cloacina.EventTaskResumed {
			fmt.Println(e.Type)
		}
	}
	// Output:
	// completed 8 pages
	// task_deferred
	// task_resumed
	// task_deferred
	// task_resumed
}

// Runs started from a task form a tree: the child records its parent, and
// cancelling the parent cancels the child too, cancelling the context of
// the child's running task.
func ExampleRunner_Cancel_children() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	var runner *cloacina.Runner
	childRunning := make(chan struct{})
	crawl := cloacina.MustWorkflow("crawl",
		cloacina.Task{Name: "fetch", Run: func(ctx context.Context, _ *cloacina.Context) error {
			close(childRunning)
			<-ctx.Done() // told to stop when the parent run is cancelled
			return ctx.Err()
		}},
	)
	index := cloacina.MustWorkflow("index",
		cloacina.Task{Name: "crawl_site", Run: func(ctx context.Context, _ *cloacina.Context) error {
			_, err := runner.Execute(ctx, "crawl", nil)
			return err
		}},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{index, crawl},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	parent, err := runner.ExecuteAsync(ctx, "index", nil)
	if err != nil {
		log.Fatal(err)
	}
	<-childRunning
	parentID := parent.ID()
	children, err := runner.List(ctx, &cloacina.ListOpts{ParentRunID: &parentID})
	if err != nil {
		log.Fatal(err)
	}
	if err := parent.Cancel(ctx); err != nil {
		log.Fatal(err)
	}
	child, err := runner.Get(ctx, children[0].ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(child.Workflow, "is a child of the index run:", *child.ParentRunID == parentID)
	fmt.Println(child.Workflow, "is", child.Status)
	fmt.Println("its reason names the parent:", child.Error == "parent run "+parentID.String()+" cancelled")
	// Output:
	// crawl is a child of the index run: true
	// crawl is cancelled
	// its reason names the parent: true
}
