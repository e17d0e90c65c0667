package cloacina_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cloacina-go/cloacina"
)

// Every state transition is an execution event, written in the same
// transaction as the transition: the log of a run tells its whole story,
// and replaying it rebuilds every status.
func ExampleRunner_RunEvents() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("chain",
		cloacina.Task{Name: "extract", Run: noop},
		cloacina.Task{Name: "load", DependsOn: []string{"extract"}, Run: noop},
	)
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	result, err := runner.Execute(ctx, "chain", nil)
	if err != nil {
		log.Fatal(err)
	}
	events, err := runner.RunEvents(ctx, result.ID)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range events {
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%-20s %s", e.Type, e.TaskName)))
	}
	replayed := cloacina.Replay(events)
	fmt.Println("replayed:", replayed.Runs[result.ID])
	// Output:
	// task_created         extract
	// task_created         load
	// task_marked_ready    extract
	// pipeline_started
	// task_claimed         extract
	// task_started         extract
	// task_completed       extract
	// task_marked_ready    load
	// task_claimed         load
	// task_started         load
	// task_completed       load
	// pipeline_completed
	// replayed: completed
}

// A follower reads the log as it grows: start with Follow, then pass the
// sequence number of the last event it got. It never skips an event, also
// on PostgreSQL, where events can commit out of sequence order.
func ExampleEventQuery_follow() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("one", cloacina.Task{Name: "only", Run: noop})
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	query := &cloacina.EventQuery{Follow: true}
	for range 2 {
		if _, err := runner.Execute(ctx, "one", nil); err != nil {
			log.Fatal(err)
		}
		events, err := runner.Events(ctx, query)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(len(events), "new events, the last", events[len(events)-1].Type)
		query.AfterSeq = events[len(events)-1].SequenceNum
	}
	// Output:
	// 7 new events, the last pipeline_completed
	// 7 new events, the last pipeline_completed
}

// Newest-first pages go back through the log: the oldest event of each
// page bounds the next with BeforeSeq.
func ExampleEventQuery_pageBack() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("one", cloacina.Task{Name: "only", Run: noop})
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)
	for range 2 {
		if _, err := runner.Execute(ctx, "one", nil); err != nil {
			log.Fatal(err)
		}
	}

	query := &cloacina.EventQuery{Newest: true, Limit: 5}
	for {
		page, err := runner.Events(ctx, query)
		if err != nil {
			log.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		fmt.Println(len(page), "events, from", page[0].Type, "back to", page[len(page)-1].Type)
		query.BeforeSeq = page[len(page)-1].SequenceNum
	}
	// Output:
	// 5 events, from pipeline_completed back to pipeline_started
	// 5 events, from task_marked_ready back to task_started
	// 4 events, from task_claimed back to task_created
}

// StreamEvents delivers the log as it is committed, for as long as the
// loop wants it: here every event of one run, until the run completes.
func ExampleRunner_StreamEvents() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	noop := func(context.Context, *cloacina.Context) error { return nil }
	wf := cloacina.MustWorkflow("one", cloacina.Task{Name: "only", Run: noop})
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	exec, err := runner.ExecuteAsync(ctx, "one", nil)
	if err != nil {
		log.Fatal(err)
	}
	id := exec.ID()
	// Follow: from the start of the log (a run's first events may commit
	// before the stream begins); without it, from now on.
	query := &cloacina.EventQuery{RunID: &id, Follow: true}
	for e, err := range runner.StreamEvents(ctx, query, &cloacina.StreamOpts{Interval: 10 * time.Millisecond}) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%-20s %s", e.Type, e.TaskName)))
		if e.Type == cloacina.EventPipelineCompleted {
			break
		}
	}
	// Output:
	// task_created         only
	// task_marked_ready    only
	// pipeline_started
	// task_claimed         only
	// task_started         only
	// task_completed       only
	// pipeline_completed
}
