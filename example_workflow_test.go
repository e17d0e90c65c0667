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

// A diamond workflow on an embedded SQLite file: fetch fans out to two
// transforms whose outputs are merged for the report.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	wf, err := cloacina.NewWorkflow("etl",
		cloacina.Task{Name: "fetch", Run: func(ctx context.Context, tc *cloacina.Context) error {
			return tc.Set("rows", []int{3, 1, 2})
		}},
		cloacina.Task{Name: "count", DependsOn: []string{"fetch"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			rows, err := cloacina.Get[[]int](tc, "rows")
			if err != nil {
				return err
			}
			return tc.Set("count", len(rows))
		}},
		cloacina.Task{Name: "sum", DependsOn: []string{"fetch"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			rows, err := cloacina.Get[[]int](tc, "rows")
			if err != nil {
				return err
			}
			total := 0
			for _, r := range rows {
				total += r
			}
			return tc.Set("sum", total)
		}},
		cloacina.Task{Name: "report", DependsOn: []string{"count", "sum"}, Run: func(ctx context.Context, tc *cloacina.Context) error {
			count, _ := cloacina.Get[int](tc, "count")
			sum, _ := cloacina.Get[int](tc, "sum")
			return tc.Set("report", fmt.Sprintf("%d rows, total %d", count, sum))
		}},
	)
	if err != nil {
		log.Fatal(err)
	}

	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	if err := runner.Start(ctx); err != nil {
		log.Fatal(err)
	}

	result, err := runner.Execute(ctx, "etl", nil)
	if err != nil {
		log.Fatal(err)
	}
	report, _ := cloacina.Get[string](result.Context, "report")
	fmt.Println(result.Status)
	fmt.Println(report)
	for _, task := range result.Tasks {
		fmt.Println(task.Name, task.Status)
	}
	// Output:
	// completed
	// 3 rows, total 6
	// fetch completed
	// count completed
	// sum completed
	// report completed
}
