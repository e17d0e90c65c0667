package drivertest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func (b *bundle) backlog(t *testing.T, drv driver.Driver, now time.Time) []*driver.Backlog {
	t.Helper()
	got, err := drv.Reader().BacklogList(b.ctx, &driver.BacklogListParams{Now: now})
	require.NoError(t, err)
	return got
}

// BacklogList counts, per workflow with unfinished work, the outbox rows
// due and not yet due, running and deferred tasks, and unfinished runs;
// finished work is not counted.
func testBacklogList(t *testing.T, s *suite) {
	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.Empty(t, b.backlog(t, b.drv, b.now))
		b.insertPipeline(t, withWorkflow("done"), withStatus(driver.PipelineCompleted))
		require.Empty(t, b.backlog(t, b.drv, b.now), "finished runs are no backlog")
	})

	t.Run("CountsByWorkflow", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		// Workflow a: one pending run with two tasks due and one retrying.
		pa := b.insertPipeline(t, withWorkflow("a"))
		b.enqueue(t, b.at(-time.Minute), b.readyTask(pa, 0))
		b.enqueue(t, b.now, b.readyTask(pa, 1))
		b.enqueue(t, b.at(time.Minute), b.readyTask(pa, 2))
		// Workflow b: a paused run and a finished one.
		b.insertPipeline(t, withWorkflow("b"), withStatus(driver.PipelinePaused))
		b.insertPipeline(t, withWorkflow("b"), withStatus(driver.PipelineFailed))
		// Workflow wf: a running run with two running tasks, one deferred.
		running := b.claimAs(t, "r1", 2)
		require.True(t, b.setSubStatus(t, fenceOf(running[1]), "deferred", b.now))
		// Workflow done: finished work only.
		b.insertPipeline(t, withWorkflow("done"), withStatus(driver.PipelineCompleted))

		oldest := b.at(-time.Minute)
		require.Equal(t, []*driver.Backlog{
			{Workflow: "a", Ready: 2, Delayed: 1, OldestReadyAt: &oldest, PendingRuns: 1},
			{Workflow: "b", PausedRuns: 1},
			{Workflow: "wf", Running: 2, Deferred: 1, RunningRuns: 1},
		}, b.backlog(t, b.drv, b.now))

		// Now decides what is due.
		later := b.backlog(t, b.drv, b.at(2*time.Minute))
		require.Equal(t, int64(3), later[0].Ready)
		require.Zero(t, later[0].Delayed)
		early := b.backlog(t, b.drv, b.at(-2*time.Minute))
		require.Zero(t, early[0].Ready)
		require.Equal(t, int64(3), early[0].Delayed)
		require.Nil(t, early[0].OldestReadyAt)

		// A read-only driver reads it too.
		ro := s.opts.OpenReadOnly(t, b.drv)
		require.Len(t, b.backlog(t, ro, b.now), 3)
	})
}
