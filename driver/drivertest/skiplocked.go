package drivertest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// testHeldRuns pins what a completion batch needs so as not to wait
// behind one run another transaction holds: Tx.LimitLockWait bounds a
// lock's wait, failing it with ErrLockWait (and ErrTransient), and
// PipelineLockSkipLocked locks the runs no other transaction holds,
// leaving out the others and those that do not exist. Where write
// transactions are serialised (SQLite), the write transaction holds every
// row: nothing is skipped and nothing waits, as the first part shows on
// every backend.
func testHeldRuns(t *testing.T, s *suite) {
	b := s.setup(t)
	p, q := b.insertPipeline(t), b.insertPipeline(t)
	gone := uuid.New()
	sorted := func(ids ...uuid.UUID) []uuid.UUID {
		slices.SortFunc(ids, func(x, y uuid.UUID) int { return bytes.Compare(x[:], y[:]) })
		return ids
	}
	// try runs fn in a transaction it rolls back, its lock waits bounded.
	try := func(t *testing.T, fn func(tx driver.Tx)) {
		t.Helper()
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx.Rollback(context.WithoutCancel(b.ctx))
		tx.LimitLockWait(50 * time.Millisecond)
		fn(tx)
	}
	try(t, func(tx driver.Tx) {
		locked, err := tx.PipelineLockSkipLocked(b.ctx, []uuid.UUID{q.ID, gone, p.ID})
		require.NoError(t, err)
		require.Equal(t, sorted(p.ID, q.ID), pipelineIDs(locked), "nothing held elsewhere: every run that exists is locked, in id order")
		locked, err = tx.PipelineLock(b.ctx, []uuid.UUID{p.ID, q.ID})
		require.NoError(t, err, "locked again by the transaction that holds them: no wait")
		require.Len(t, locked, 2)
	})
	if !s.opts.ConcurrentTx {
		return // one write transaction at a time: no run is ever held elsewhere
	}

	holder, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	defer holder.Rollback(context.WithoutCancel(b.ctx))
	_, err = holder.PipelineLock(b.ctx, []uuid.UUID{p.ID})
	require.NoError(t, err)
	try(t, func(tx driver.Tx) {
		locked, err := tx.PipelineLockSkipLocked(b.ctx, []uuid.UUID{p.ID, q.ID})
		require.NoError(t, err)
		require.Equal(t, []uuid.UUID{q.ID}, pipelineIDs(locked), "the held run is skipped, not waited for")
	})
	try(t, func(tx driver.Tx) {
		_, err := tx.PipelineLock(b.ctx, []uuid.UUID{p.ID, q.ID})
		require.Error(t, err, "a wait past the bound fails")
		require.True(t, errors.Is(err, driver.ErrLockWait), "ErrLockWait: %v", err)
		require.True(t, errors.Is(err, driver.ErrTransient), "and transient: %v", err)
	})
	try(t, func(tx driver.Tx) {
		// Bounded after the transaction's first statement too.
		_, err := tx.PipelineLock(b.ctx, []uuid.UUID{q.ID})
		require.NoError(t, err)
		tx.LimitLockWait(20 * time.Millisecond)
		_, err = tx.PipelineLock(b.ctx, []uuid.UUID{p.ID})
		require.True(t, errors.Is(err, driver.ErrLockWait), "ErrLockWait: %v", err)
	})
	require.NoError(t, holder.Rollback(b.ctx))
	try(t, func(tx driver.Tx) {
		locked, err := tx.PipelineLock(b.ctx, []uuid.UUID{p.ID, q.ID})
		require.NoError(t, err, "released, the run is locked at once")
		require.Len(t, locked, 2)
	})
}
