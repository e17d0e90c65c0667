package cloacina

import (
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// manyWaiting is more running tasks than SQLite binds values in one
// statement (32,766): a runner reaches it with few slots, since tasks that
// wait (DeferUntil, a child run) hold none.
const manyWaiting = 33000

// addWaitingTasks registers n tasks as running on r, under claims that
// the database does not hold, in runs that do not exist (plus extra, if
// given); it returns how many of their contexts were cancelled with
// errClaimLost and with errRunCancelled, each counted once. They are removed when the test
// ends.
func addWaitingTasks(t *testing.T, r *Runner, n int, extra ...*driver.Task) (lost, cancelled *atomic.Int32) {
	t.Helper()
	lost, cancelled = new(atomic.Int32), new(atomic.Int32)
	tasks := extra
	for range n {
		tasks = append(tasks, &driver.Task{ID: uuid.New(), PipelineID: uuid.New(), Status: driver.TaskRunning, RunnerID: r.ID(), Attempt: 1})
	}
	r.runningMu.Lock()
	for _, task := range tasks {
		var once atomic.Bool // the heartbeat loop checks too: count each task once
		r.running[task.ID] = &runningTask{task: task, cancel: func(cause error) {
			if !once.CompareAndSwap(false, true) {
				return
			}
			switch cause {
			case errClaimLost:
				lost.Add(1)
			case errRunCancelled:
				cancelled.Add(1)
			}
		}}
	}
	r.runningMu.Unlock()
	t.Cleanup(func() {
		r.runningMu.Lock()
		defer r.runningMu.Unlock()
		for _, task := range tasks {
			delete(r.running, task.ID)
		}
	})
	return lost, cancelled
}

// A runner with more running tasks than SQLite binds in a statement still
// checks its claims at every heartbeat: the check used to fail every time,
// so that the runner never learnt of a claim it lost, and a leader, taking
// the failure for a failed heartbeat, gave up leading and never swept for
// dead runners.
func TestHeartbeatChecksTheClaimsOfManyWaitingTasks(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("w", Task{Name: "a", Run: ok})}})
		lost, _ := addWaitingTasks(t, r, manyWaiting)
		_, _, err := r.beat(ctx, false)
		require.NoError(t, err)
		require.EqualValues(t, manyWaiting, lost.Load(), "tasks cancelled as their claims are lost")
	})
}

// A runner with more running tasks than SQLite binds in a statement still
// hears of the runs cancelled by other processes, which its watch loop
// finds: the loop's query used to fail every time.
func TestWatchFindsCancelledRunsAmongManyWaitingTasks(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		// The run must still be unfinished when it is cancelled.
		setClaiming(r, false)
		submitter := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		exec, err := submitter.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		require.NoError(t, submitter.Cancel(ctx, exec.ID()))
		_, cancelled := addWaitingTasks(t, r, manyWaiting,
			&driver.Task{ID: uuid.New(), PipelineID: exec.ID(), Status: driver.TaskRunning, RunnerID: r.ID(), Attempt: 1})
		require.NoError(t, r.cancelCancelledRuns(ctx))
		require.NotZero(t, cancelled.Load(), "tasks cancelled with their run")
	})
}
