package cloacina

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A claim whose commit reported a failure, and which the runner then
// cannot verify (the read is refused, not merely delayed), may still be
// held: the runner does not run it, and resets it at its next heartbeat,
// so the task runs (once) while the runner stays up. It used to stay
// Running under the live runner until the runner stopped.
func TestUnverifiedClaimIsResetWhileTheRunnerRuns(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		ran := make(chan struct{}, 4)
		wf := MustWorkflow("w", Task{Name: "a", Run: func(context.Context, *Context) error {
			ran <- struct{}{}
			return nil
		}})
		r := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
		liar := &lyingDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &lyingTx{Tx: tx, d: liar} })
		refusing := &fenceReadFailing{Driver: r.drv}
		r.drv = refusing
		exec, err := r.ExecuteAsync(ctx, "w", nil) // before Start: the claimer takes it from the outbox
		require.NoError(t, err)
		reset := onEvent(r, eventOf(EventTaskReset))
		liar.armed.Store(1)
		refusing.permanent.Store(true)
		refusing.fails.Store(1)
		require.NoError(t, r.Start(ctx))

		waitFor(t, reset, "the unverified claim to be reset")
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, int64(1), liar.lied.Load())
		require.Len(t, ran, 1, "the task ran once")
		require.Equal(t, []string{
			"task_created a", "task_marked_ready a",
			"pipeline_started", "task_claimed a", "task_started a",
			"task_reset a", "task_claimed a", "task_started a",
			"task_completed a", "pipeline_completed",
		}, eventTypes(t, r, exec.ID()))
	})
}
