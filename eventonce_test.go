package cloacina

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// subStatusLiar reports a failure after committing a transaction that set a
// task's sub-status, while armed: the reply to COMMIT was lost, the commit
// was not.
type subStatusLiar struct {
	armed atomic.Int64
	lied  atomic.Int64
}

type subStatusLiarTx struct {
	driver.Tx
	d   *subStatusLiar
	set bool
}

func (tx *subStatusLiarTx) TaskSubStatusSet(ctx context.Context, p *driver.TaskSubStatusParams) (bool, error) {
	held, err := tx.Tx.TaskSubStatusSet(ctx, p)
	tx.set = tx.set || (err == nil && held)
	return held, err
}

func (tx *subStatusLiarTx) Commit(ctx context.Context) error {
	if err := tx.Tx.Commit(ctx); err != nil {
		return err
	}
	if tx.set && tx.d.armed.Add(-1) >= 0 {
		tx.d.lied.Add(1)
		return fmt.Errorf("%w: connection lost while reading the reply to COMMIT", driver.ErrTransient)
	}
	return nil
}

// A deferral whose commit is reported lost, though it committed, is
// retried; the retry records nothing again: one task_deferred and one
// task_resumed per wait, as for every other transition.
func TestDeferUntilRecordsEachTransitionOnceWhenACommitIsReportedLost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var ready atomic.Bool
		wf := MustWorkflow("waiting", Task{Name: "await", Run: func(ctx context.Context, tc *Context) error {
			return DeferUntil(ctx, 5*time.Millisecond, func(context.Context) (bool, error) { return ready.Load(), nil })
		}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		liar := &subStatusLiar{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &subStatusLiarTx{Tx: tx, d: liar} })
		require.NoError(t, r.Start(ctx))
		liar.armed.Store(2) // the deferral and the resumption
		exec, err := r.ExecuteAsync(ctx, "waiting", nil)
		require.NoError(t, err)
		// The commit that recorded the deferral reported failure: no
		// commit hook sees its event, the database does.
		require.Eventually(t, func() bool {
			evs, err := r.Events(ctx, &EventQuery{RunID: ptr(exec.ID()), Types: []EventType{EventTaskDeferred}})
			require.NoError(t, err)
			return len(evs) > 0 && liar.lied.Load() == 1
		}, testTimeout, 5*time.Millisecond, "the task to defer")
		ready.Store(true)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, int64(2), liar.lied.Load(), "every armed lie was told")
		require.Equal(t, []string{"task_created await", "task_marked_ready await", "pipeline_started",
			"task_claimed await", "task_started await", "task_deferred await", "task_resumed await",
			"task_completed await", "pipeline_completed"}, eventTypes(t, r, res.ID))
	})
}
