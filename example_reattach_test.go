package cloacina_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cloacina-go/cloacina"
)

// Each attempt of a task runs its function anew: a task retried after an
// error (or reset because its runner died) while a child run it started
// goes on would start a second child. Here the retry finds the child its
// first attempt started, among the runs its run started, and waits for it
// instead.
func ExampleRunner_Execution_reattach() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	var runner *cloacina.Runner
	var renders atomic.Int32
	render := cloacina.MustWorkflow("render",
		cloacina.Task{Name: "draw", Run: func(context.Context, *cloacina.Context) error {
			renders.Add(1)
			return nil
		}},
	)
	report := cloacina.MustWorkflow("report",
		cloacina.Task{
			Name:  "render_and_mail",
			Retry: &cloacina.RetryPolicy{MaxAttempts: 2, InitialDelay: 10 * time.Millisecond},
			Run: func(ctx context.Context, _ *cloacina.Context) error {
				info, _ := cloacina.TaskInfoFrom(ctx)
				children, err := runner.List(ctx, &cloacina.ListOpts{ParentRunID: &info.RunID})
				if err != nil {
					return err
				}
				var child *cloacina.Execution
				for _, c := range children {
					if c.ParentTaskID != nil && *c.ParentTaskID == info.TaskID {
						child = runner.Execution(c.ID) // started by an earlier attempt
					}
				}
				if child == nil {
					if child, err = runner.ExecuteAsync(ctx, "render", nil); err != nil {
						return err
					}
				}
				if info.Attempt == 1 {
					return errors.New("mail server unreachable") // the child goes on
				}
				res, err := child.Wait(ctx)
				if err != nil {
					return err
				}
				return res.Err()
			},
		},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{report, render}, Logger: slog.New(slog.DiscardHandler),
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
	children, _ := runner.List(ctx, &cloacina.ListOpts{ParentRunID: &result.ID})
	fmt.Println(result.Status, "after", result.Task("render_and_mail").Attempts, "attempts;",
		len(children), "child run;", renders.Load(), "render")
	// Output: completed after 2 attempts; 1 child run; 1 render
}
