package drivertest

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// testTaskFinishSkipLocked pins TaskFinishParams.SkipLocked, with which a
// completion batch does not wait behind one run held by another
// transaction. Where transactions run at once (PostgreSQL), a run another
// transaction holds is left out of Pipelines and the finishes of its tasks
// are not applied, in each shape of the call (lock only; lock and finish;
// lock, finish and read back); the others are locked and finished as
// without it. Where write transactions are serialised (SQLite), the write
// transaction holds every run: nothing is ever skipped, as the first part
// shows on every backend.
func testTaskFinishSkipLocked(t *testing.T, s *suite) {
	b := s.setup(t)
	p, q := b.insertPipeline(t), b.insertPipeline(t)
	tp, tq := b.readyTask(p, 0), b.readyTask(q, 0)
	b.enqueue(t, b.now, tp, tq)
	claimed := b.claim(t, "r1", 2)
	require.Len(t, claimed, 2)
	var finishes []driver.TaskFinish
	taskOf := map[uuid.UUID]uuid.UUID{}
	for _, task := range claimed {
		finishes = append(finishes, driver.TaskFinish{Fence: fenceOf(task), Status: driver.TaskCompleted, Attempt: 1, Now: b.now})
		taskOf[task.PipelineID] = task.ID
	}
	both := []uuid.UUID{p.ID, q.ID}
	shapes := map[string]*driver.TaskFinishParams{
		"lock":   {LockPipelineIDs: both, SkipLocked: true},
		"finish": {Finishes: finishes, LockPipelineIDs: both, SkipLocked: true},
		"list":   {Finishes: finishes, LockPipelineIDs: both, ListPipelineIDs: both, SkipLocked: true},
		"lean":   {Finishes: finishes, LockPipelineIDs: both, ListPipelineIDs: both, ListStatusOnly: true, SkipLocked: true},
	}
	// try runs the call in a transaction it rolls back.
	try := func(t *testing.T, params *driver.TaskFinishParams) *driver.TaskFinishResult {
		t.Helper()
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx.Rollback(context.WithoutCancel(b.ctx))
		res, err := tx.TaskFinishMany(b.ctx, params)
		require.NoError(t, err)
		return res
	}
	sorted := func(ids ...uuid.UUID) []uuid.UUID {
		slices.SortFunc(ids, func(x, y uuid.UUID) int { return bytes.Compare(x[:], y[:]) })
		return ids
	}

	for name, params := range shapes {
		res := try(t, params)
		require.Equal(t, sorted(p.ID, q.ID), pipelineIDs(res.Pipelines), "%s: nothing held elsewhere: every run is locked", name)
		if len(params.Finishes) > 0 {
			require.ElementsMatch(t, []uuid.UUID{taskOf[p.ID], taskOf[q.ID]}, res.Finished, "%s: and every task finished", name)
		}
	}
	if !s.opts.ConcurrentTx {
		return // one write transaction at a time: no run is ever held elsewhere
	}

	holder, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	defer holder.Rollback(context.WithoutCancel(b.ctx))
	_, err = holder.PipelineLock(b.ctx, []uuid.UUID{p.ID})
	require.NoError(t, err)
	for name, params := range shapes {
		res := try(t, params)
		require.Equal(t, []uuid.UUID{q.ID}, pipelineIDs(res.Pipelines), "%s: the held run is skipped, not waited for", name)
		if len(params.Finishes) > 0 {
			require.Equal(t, []uuid.UUID{taskOf[q.ID]}, res.Finished, "%s: the held run's task is not finished", name)
		}
	}
	require.NoError(t, holder.Rollback(b.ctx))
	res := try(t, shapes["lean"])
	require.Len(t, res.Pipelines, 2, "released, the run is locked again")
}
