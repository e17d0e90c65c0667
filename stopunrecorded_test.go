package cloacina

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// refusingTx makes every TaskFinishMany fail, while refuse is set, with an
// error that is not transient: the database refuses the task's result.
type refusingTx struct {
	driver.Tx
	refuse *atomic.Bool
}

func (tx *refusingTx) TaskFinishMany(ctx context.Context, p *driver.TaskFinishParams) (*driver.TaskFinishResult, error) {
	if tx.refuse.Load() {
		return nil, errors.New("permission denied for table task_executions")
	}
	return tx.Tx.TaskFinishMany(ctx, p)
}

// A Stop that gives up recording a task's result (the database refuses it
// until Stop's wait for the completer ends) says so: the task stays
// Running, to be run again once its claim is recovered. Stop used to
// return nil, as if every result had been recorded.
func TestStopReportsResultsItCouldNotRecord(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}), make(chan struct{})
		wf := MustWorkflow("w", Task{Name: "a", Run: func(context.Context, *Context) error {
			close(started)
			<-release
			return nil
		}})
		logger, refused := refusalLogger()
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Logger: logger})
		var refuse atomic.Bool
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &refusingTx{Tx: tx, refuse: &refuse} })
		r.flushWait = 300 * time.Millisecond
		require.NoError(t, r.Start(ctx))
		exec, err := r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")
		refuse.Store(true)
		close(release)
		waitFor(t, refused, "the result to be refused")

		err = r.Stop(ctx)
		require.Error(t, err, "Stop gave up a task's result and returned nil")
		require.ErrorContains(t, err, "1 task result")
		refuse.Store(false)
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, TaskStatusRunning, res.Task("a").Status, "the result was not recorded")
	})
}
