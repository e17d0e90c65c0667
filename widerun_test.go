package cloacina

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// wideWorkflow is a root, width tasks that depend on it (mid05 fails when
// failMid), a join of all of them by the default rule, a task after the
// join, a task that runs when mid05 failed, and a second leaf that
// depends on the root alone: more tasks than narrowMin, so its runs are
// decided narrowly (advanceFrom, endFrom).
func wideWorkflow(width int, failMid bool) *Workflow {
	tasks := []Task{{Name: "root", Run: setKey("root", true)}}
	mids := make([]string, width)
	for i := range width {
		mids[i] = fmt.Sprintf("mid%02d", i)
		run := setKey(mids[i], i)
		if failMid && i == 5 {
			run = func(context.Context, *Context) error { return Permanent(errors.New("mid05 broke")) }
		}
		tasks = append(tasks, Task{Name: mids[i], DependsOn: []string{"root"}, Run: run})
	}
	tasks = append(tasks,
		Task{Name: "join", DependsOn: mids, Run: setKey("joined", true)},
		Task{Name: "after", DependsOn: []string{"join"}, Run: ok},
		Task{Name: "rescue", DependsOn: mids, Trigger: Any(TaskFailed("mid05")), Run: setKey("rescued", true)},
		Task{Name: "side", DependsOn: []string{"root"}, Trigger: Always(), Run: ok},
	)
	return MustWorkflow("wide", tasks...)
}

// A wide run is decided from the tasks its completions end and their
// dependents, with a count of open dependencies for a join: the join runs
// once, after all of its dependencies, with all of their outputs, and
// trigger rules, skips that cascade and the run's end come out as for a
// small run.
func TestWideRunDecidedNarrowly(t *testing.T) {
	t.Parallel()
	const width = 40
	require.True(t, wideWorkflow(width, false).narrow(), "the test workflow must be decided narrowly")
	forEachBackend(t, func(t *testing.T, url string) {
		t.Run("AllSucceed", func(t *testing.T) {
			r := startRunner(t, url, &Config{Workflows: []*Workflow{wideWorkflow(width, false)}})
			res, err := r.Execute(testContext(t), "wide", nil)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status, res.Error)
			require.Equal(t, TaskStatusCompleted, res.Task("join").Status)
			require.Equal(t, TaskStatusCompleted, res.Task("after").Status)
			require.Equal(t, TaskStatusSkipped, res.Task("rescue").Status)
			require.Equal(t, `trigger rule any(task_failed("mid05")) not satisfied`, res.Task("rescue").Error)
			require.Equal(t, TaskStatusCompleted, res.Task("side").Status)
			for i := range width {
				got, found := res.Context.Raw(fmt.Sprintf("mid%02d", i))
				require.True(t, found, "the join merged every mid's output")
				require.Equal(t, fmt.Sprint(i), string(got))
			}
			require.True(t, res.Context.Has("joined"))
			events, err := r.Events(testContext(t), &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskMarkedReady}})
			require.NoError(t, err)
			ready := 0
			for _, ev := range events {
				if ev.TaskName == "join" {
					ready++
				}
			}
			require.Equal(t, 1, ready, "the join is made ready once")
		})
		t.Run("OneFails", func(t *testing.T) {
			r := startRunner(t, url, &Config{Workflows: []*Workflow{wideWorkflow(width, true)}})
			res, err := r.Execute(testContext(t), "wide", nil)
			require.NoError(t, err)
			require.Equal(t, PipelineFailed, res.Status)
			require.Contains(t, res.Error, `task "mid05" failed: mid05 broke`)
			require.Equal(t, TaskStatusSkipped, res.Task("join").Status)
			require.Equal(t, `upstream task "mid05" failed`, res.Task("join").Error)
			require.Equal(t, TaskStatusSkipped, res.Task("after").Status, "the skip cascades")
			require.Equal(t, `upstream task "join" was skipped`, res.Task("after").Error)
			require.Equal(t, TaskStatusCompleted, res.Task("rescue").Status)
			require.True(t, res.Context.Has("rescued"))
		})
	})
}

// A run with many leaves ends once all of them have, whatever order they
// end in. Its completions remember a leaf they found open and read it
// first (runState.endFrom): here each leaf waits for the one declared
// after it, so the leaf remembered ends while others are still open, at
// every turn, and the run must not end before its first leaf does.
func TestManyLeavesEndInAnyOrder(t *testing.T) {
	t.Parallel()
	const width = 40
	forEachBackend(t, func(t *testing.T, url string) {
		ended := make([]chan struct{}, width+1)
		for i := range ended {
			ended[i] = make(chan struct{})
		}
		close(ended[width])
		tasks := []Task{{Name: "root", Run: ok}}
		for i := range width {
			name := fmt.Sprintf("leaf%02d", i)
			tasks = append(tasks, Task{Name: name, DependsOn: []string{"root"}, Run: func(ctx context.Context, tc *Context) error {
				select {
				case <-ended[i+1]:
				case <-ctx.Done():
					return ctx.Err()
				}
				defer close(ended[i])
				return tc.Set(name, i)
			}})
		}
		wf := MustWorkflow("leaves", tasks...)
		require.True(t, wf.narrow(), "the test workflow must be decided narrowly")
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: width})
		res, err := r.Execute(testContext(t), "leaves", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, res.Error)
		for i := range width {
			got, found := res.Context.Raw(fmt.Sprintf("leaf%02d", i))
			require.True(t, found, "the run's context merges every leaf's output")
			require.Equal(t, fmt.Sprint(i), string(got))
		}
		events, err := r.RunEvents(testContext(t), res.ID)
		require.NoError(t, err)
		require.Equal(t, EventPipelineCompleted, events[len(events)-1].Type, "the run ends after every task")
	})
}
