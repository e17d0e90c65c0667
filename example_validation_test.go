package cloacina_test

import (
	"context"
	"fmt"

	"github.com/cloacina-go/cloacina"
)

// NewWorkflow reports every problem of a definition at once, each with the
// fix.
func ExampleNewWorkflow_validation() {
	noop := func(context.Context, *cloacina.Context) error { return nil }
	_, err := cloacina.NewWorkflow("etl",
		cloacina.Task{Name: "extract", Run: noop},
		cloacina.Task{Name: "load", DependsOn: []string{"extrct"}, Run: noop},
		cloacina.Task{Name: "notify", DependsOn: []string{"extract"}, Trigger: cloacina.Any(cloacina.TaskFailed("load"))},
	)
	fmt.Println(err)

	_, err = cloacina.NewWorkflow("loop",
		cloacina.Task{Name: "a", DependsOn: []string{"b"}, Run: noop},
		cloacina.Task{Name: "b", DependsOn: []string{"a"}, Run: noop},
	)
	fmt.Println(err)
	// Output:
	// invalid workflow "etl": 2 problems:
	//   - task "notify" has no function: set Task.Run
	//   - task "load" depends on "extrct", which is not a task of this workflow: did you mean "extract"?
	// invalid workflow "loop": dependency cycle a → b → a: remove one of these dependencies
}
