package cloacina

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A claim whose first attempt committed although its commit reported a
// failure must not claim as many tasks again on its retry: the claims it
// may hold count against the slots it reserved. It used to claim twice the
// slots, and the claimer then waited, holding claimMu, for a slot for each
// extra task; with every slot held by tasks that run until cancelled, Stop
// could never take claimMu to cancel them, and hung past its deadline.
func TestUncertainClaimRetryStaysWithinItsSlots(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var running, peak atomic.Int32
		started := make(chan struct{}, 16)
		release := make(chan struct{})
		t.Cleanup(sync.OnceFunc(func() { close(release) }))
		wf := MustWorkflow("w", Task{Name: "a", Run: func(ctx context.Context, _ *Context) error {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			started <- struct{}{}
			select { // runs until it is cancelled
			case <-ctx.Done():
				return ctx.Err()
			case <-release:
				return nil
			}
		}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 2})
		liar := &lyingDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &lyingTx{Tx: tx, d: liar} })
		for range 4 { // queued before Start: the claimer takes them from the outbox
			_, err := r.ExecuteAsync(ctx, "w", nil)
			require.NoError(t, err)
		}
		liar.armed.Store(1)
		require.NoError(t, r.Start(ctx))
		waitFor(t, started, "a task to start")
		waitFor(t, started, "a second task to start")
		require.Equal(t, int64(1), liar.lied.Load())

		stopCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		stopped := make(chan error, 1)
		go func() { stopped <- r.Stop(stopCtx) }()
		select {
		case err := <-stopped:
			require.ErrorIs(t, err, context.DeadlineExceeded)
		case <-time.After(20 * time.Second):
			t.Fatalf("Stop with a 1 s deadline had not returned 20 s later (task functions running: %d)", running.Load())
		}
		require.LessOrEqual(t, peak.Load(), int32(2), "more tasks ran at once than MaxConcurrentTasks")
		runners, err := r.Runners(ctx)
		require.NoError(t, err)
		require.Empty(t, runners)
		backlog, err := r.Backlog(ctx)
		require.NoError(t, err)
		for _, b := range backlog {
			require.Zero(t, b.Running, "no task left Running under the stopped runner: %+v", b)
		}
	})
}
