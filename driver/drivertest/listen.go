package drivertest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// subscribe opens a subscription on drv, closed when t ends.
func (b *bundle) subscribe(t *testing.T, drv driver.Driver) driver.Subscription {
	t.Helper()
	sub, err := drv.Listen(b.ctx)
	require.NoError(t, err)
	t.Cleanup(func() { sub.Close() })
	return sub
}

// next waits for the next payload, failing the test at the deadline.
func (b *bundle) next(t *testing.T, sub driver.Subscription) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	p, err := sub.Wait(ctx)
	require.NoError(t, err, "waiting for a wake-up")
	return p
}

// notify commits a change set that only sends payloads, through drv.
func (b *bundle) notify(t *testing.T, drv driver.Driver, payloads ...string) {
	t.Helper()
	tx, err := drv.Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(b.ctx))
	require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Notify: payloads}))
	require.NoError(t, tx.Commit(b.ctx))
}

// Delivery is checked with sentinels rather than timeouts: a payload that
// should not arrive would arrive before the sentinel sent after it.
func testListen(t *testing.T, s *suite) {
	t.Run("AfterCommitDedupedNeverOnRollback", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		sub := b.subscribe(t, b.drv)

		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Notify: []string{"rolled-back"}}))
		require.NoError(t, tx.Rollback(b.ctx))

		tx, err = b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Notify: []string{"work:a", "work:b", "work:a"}}))
		require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Notify: []string{"work:b", "cancel:x"}}))
		require.NoError(t, tx.Commit(b.ctx))
		b.notify(t, b.drv, "sentinel")

		require.Equal(t, "work:a", b.next(t, sub))
		require.Equal(t, "work:b", b.next(t, sub))
		require.Equal(t, "cancel:x", b.next(t, sub), "duplicates within a transaction are sent once")
		require.Equal(t, "sentinel", b.next(t, sub), "nothing of the rolled-back transaction is sent")
	})

	t.Run("ConflictedChangeSetSendsNothing", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		sub := b.subscribe(t, b.drv)
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		err = applyAndCommit(b.ctx, tx, &driver.ChangeSet{
			Pipelines: []driver.PipelineUpdate{{ID: p.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelineCancelled, Now: b.now}},
			Notify:    []string{"cancel:" + p.ID.String()},
		})
		require.ErrorIs(t, err, driver.ErrConflict)
		b.notify(t, b.drv, "sentinel")
		require.Equal(t, "sentinel", b.next(t, sub))
	})

	// Wake-ups asked for inside an application's transaction follow that
	// transaction: whether a backend can deliver them at its commit is
	// its own affair (UnwrapTx), but a rolled-back one sends nothing.
	t.Run("AppTxRollbackSendsNothing", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		sub := b.subscribe(t, b.drv)
		app := s.opts.BeginAppTx(t, b.drv)
		exec, err := b.drv.UnwrapTx(b.ctx, app.Tx)
		require.NoError(t, err)
		require.NoError(t, exec.ChangeSetApply(b.ctx, &driver.ChangeSet{Notify: []string{"app"}}))
		require.NoError(t, app.Rollback(b.ctx))
		b.notify(t, b.drv, "sentinel")
		require.Equal(t, "sentinel", b.next(t, sub))
	})

	t.Run("EverySubscriberOfTheDatabase", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		sibling := s.opts.OpenSibling(t, b.drv)
		subs := []driver.Subscription{b.subscribe(t, b.drv), b.subscribe(t, b.drv), b.subscribe(t, sibling)}
		b.notify(t, sibling, "from-sibling")
		b.notify(t, b.drv, "from-main")
		for i, sub := range subs {
			require.Equal(t, "from-sibling", b.next(t, sub), "subscriber %d", i)
			require.Equal(t, "from-main", b.next(t, sub), "subscriber %d", i)
		}
	})

	t.Run("NotAcrossDatabases", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		other := s.setup(t)
		sub := b.subscribe(t, b.drv)
		b.notify(t, other.drv, "other-tenant")
		b.notify(t, b.drv, "sentinel")
		require.Equal(t, "sentinel", b.next(t, sub))
	})

	t.Run("NotBeforeCommit", func(t *testing.T) {
		t.Parallel()
		if !s.opts.ConcurrentTx {
			t.Skip("write transactions of this backend are serialised: no sentinel can commit while one is open")
		}
		b := s.setup(t)
		sub := b.subscribe(t, b.drv)
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx.Rollback(context.WithoutCancel(b.ctx))
		require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Notify: []string{"late"}}))
		b.notify(t, b.drv, "sentinel")
		require.Equal(t, "sentinel", b.next(t, sub), "a payload of an open transaction is not delivered")
		require.NoError(t, tx.Commit(b.ctx))
		require.Equal(t, "late", b.next(t, sub))
	})

	// A Wait that ends with its context leaves the subscription usable:
	// nothing committed meanwhile is lost.
	t.Run("WaitEndsWithContext", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		sub := b.subscribe(t, b.drv)

		ctx, cancel := context.WithCancel(b.ctx)
		cancel()
		_, err := sub.Wait(ctx)
		require.ErrorIs(t, err, context.Canceled)

		ctx, cancel = context.WithTimeout(b.ctx, 20*time.Millisecond)
		defer cancel()
		_, err = sub.Wait(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)

		b.notify(t, b.drv, "after")
		require.Equal(t, "after", b.next(t, sub))
	})

	t.Run("WaitAfterCloseFails", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		sub, err := b.drv.Listen(b.ctx)
		require.NoError(t, err)
		require.NoError(t, sub.Close())
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer cancel()
		_, err = sub.Wait(ctx)
		require.Error(t, err)
		require.NotErrorIs(t, err, context.DeadlineExceeded, "Wait on a closed subscription returns at once")
	})
}
