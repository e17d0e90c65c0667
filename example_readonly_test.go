package cloacina_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cloacina-go/cloacina"
)

// A dashboard, or any tool that inspects a database it must not change,
// opens a read-only runner: it reads what the runners write, needs only
// read access to the file (or SELECT on the tables), and writes nothing.
func ExampleConfig_readOnly() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)
	url := "sqlite://" + filepath.Join(dir, "cloacina.db")

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("report", cloacina.Task{Name: "render", Run: noop})
	runner, err := cloacina.Open(ctx, url, &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)
	if _, err := runner.Execute(ctx, "report", nil); err != nil {
		log.Fatal(err)
	}

	dashboard, err := cloacina.Open(ctx, url, &cloacina.Config{ReadOnly: true})
	if err != nil {
		log.Fatal(err)
	}
	defer dashboard.Close()
	runs, err := dashboard.List(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, run := range runs {
		fmt.Println(run.Workflow, run.Status)
	}
	err = dashboard.Cancel(ctx, runs[0].ID)
	fmt.Println("cancel refused:", errors.Is(err, cloacina.ErrReadOnly))
	// Output:
	// report completed
	// cancel refused: true
}
