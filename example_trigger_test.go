package cloacina_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cloacina-go/cloacina"
)

// Trigger rules decide whether a task runs once its dependencies ended:
// by default only when all of them completed; Always for clean-up;
// conditions on upstream outcomes and on context values otherwise.
func ExampleTriggerRule() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("orders",
		cloacina.Task{Name: "score", Run: func(ctx context.Context, tc *cloacina.Context) error {
			return tc.Set("risk", 0.9)
		}},
		cloacina.Task{Name: "charge", DependsOn: []string{"score"}, Run: func(context.Context, *cloacina.Context) error {
			return errors.New("card declined")
		}},
		cloacina.Task{Name: "ship", DependsOn: []string{"charge"}, Run: noop},
		cloacina.Task{Name: "refund", DependsOn: []string{"charge"}, Trigger: cloacina.All(cloacina.TaskFailed("charge")), Run: noop},
		cloacina.Task{Name: "review", DependsOn: []string{"score"},
			Trigger: cloacina.All(cloacina.ContextValue("risk", cloacina.OpGreaterThan, 0.8)), Run: noop},
		cloacina.Task{Name: "cleanup", DependsOn: []string{"ship", "refund"}, Trigger: cloacina.Always(), Run: noop},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	result, err := runner.Execute(ctx, "orders", nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, task := range result.Tasks {
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%-7s %-9s %s", task.Name, task.Status, task.Error)))
	}
	fmt.Println(result.Status)
	// Output:
	// score   completed
	// charge  failed    card declined
	// ship    skipped   upstream task "charge" failed
	// refund  completed
	// review  completed
	// cleanup completed
	// failed
}
