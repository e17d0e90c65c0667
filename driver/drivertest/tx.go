package drivertest

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testTx(t *testing.T, s *suite) {
	t.Run("CommitMakesVisible", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		b.getPipeline(t, p.ID)
	})

	t.Run("RollbackDiscards", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: []byte(`{}`), Now: b.now}
		ok, err := insertOne(b.ctx, tx, p)
		require.NoError(t, err)
		require.True(t, ok)
		// The transaction sees its own write; nobody else does.
		_, err = tx.PipelineGet(b.ctx, p.ID)
		require.NoError(t, err)
		_, err = b.drv.Reader().PipelineGet(b.ctx, p.ID)
		require.ErrorIs(t, err, driver.ErrNotFound)
		require.NoError(t, tx.Rollback(b.ctx))
		_, err = b.drv.Reader().PipelineGet(b.ctx, p.ID)
		require.ErrorIs(t, err, driver.ErrNotFound)
	})

	// The engine defers Rollback after every Begin, so Rollback after
	// Commit (or a second Rollback) must be a harmless no-op.
	t.Run("RollbackAfterCommitIsNoop", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: []byte(`{}`), Now: b.now}
		_, err = insertOne(b.ctx, tx, p)
		require.NoError(t, err)
		require.NoError(t, tx.Commit(b.ctx))
		require.NoError(t, tx.Rollback(b.ctx))
		b.getPipeline(t, p.ID)

		tx, err = b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.NoError(t, tx.Rollback(b.ctx))
		require.NoError(t, tx.Rollback(b.ctx))
	})

	// Begin with a context that ends must not leave the database locked.
	t.Run("BeginAfterCancelledBegin", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		ctx, cancel := context.WithCancel(b.ctx)
		cancel()
		if tx, err := b.drv.Begin(ctx); err == nil {
			tx.Rollback(b.ctx)
		}
		b.insertPipeline(t)
	})
}

func testUnwrapTx(t *testing.T, s *suite) {
	t.Run("WrongType", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		for _, tx := range []any{nil, "tx", 42, &struct{}{}, b.drv} {
			exec, err := b.drv.UnwrapTx(b.ctx, tx)
			require.ErrorIs(t, err, driver.ErrWrongTxType, "UnwrapTx(%T)", tx)
			require.Nil(t, exec)
		}
	})

	t.Run("WritesInsideAppTx", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		for _, commit := range []bool{true, false} {
			app := s.opts.BeginAppTx(t, b.drv)
			exec, err := b.drv.UnwrapTx(b.ctx, app.Tx)
			require.NoError(t, err)
			p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
				Status: driver.PipelinePending, Input: []byte(`{"app":true}`), Now: b.now}
			ok, err := insertOne(b.ctx, exec, p)
			require.NoError(t, err)
			require.True(t, ok)
			task := driver.TaskInsert{ID: uuid.New(), PipelineID: p.ID, WorkflowName: "wf", Name: "a",
				Status: driver.TaskReady, Attempt: 1, MaxAttempts: 1, Now: b.now}
			require.NoError(t, exec.TaskInsertMany(b.ctx, []driver.TaskInsert{task}))
			require.NoError(t, exec.ChangeSetApply(b.ctx, &driver.ChangeSet{
				Outbox: []driver.OutboxInsert{outboxFor(task, b.now)},
				Events: []driver.EventInsert{event(p.ID, nil, driver.EventTaskCreated, b.now)},
				Notify: []string{"work:wf"},
			}))
			// Reads through the unwrapped executor see the writes;
			// the backend's own reader does not, until commit.
			_, err = exec.PipelineGet(b.ctx, p.ID)
			require.NoError(t, err)
			_, err = b.drv.Reader().PipelineGet(b.ctx, p.ID)
			require.ErrorIs(t, err, driver.ErrNotFound)

			if commit {
				require.NoError(t, app.Commit(b.ctx))
				b.getPipeline(t, p.ID)
				require.Equal(t, driver.TaskReady, b.getTask(t, task.ID).Status)
				require.True(t, b.peek(t, b.now, "wf").Claimable)
				require.Len(t, b.events(t, &driver.EventListParams{PipelineID: &p.ID}), 1)
				// Leave the outbox empty for the rollback round.
				require.Len(t, b.claim(t, "r", 10), 1)
			} else {
				require.NoError(t, app.Rollback(b.ctx))
				_, err = b.drv.Reader().PipelineGet(b.ctx, p.ID)
				require.ErrorIs(t, err, driver.ErrNotFound)
				require.False(t, b.peek(t, b.now, "wf").Claimable)
				require.Empty(t, b.events(t, &driver.EventListParams{PipelineID: &p.ID}))
			}
		}
	})

	// A transaction on another database is refused before anything is
	// written there (the run would land where none of this database's
	// runners look), and is left usable.
	t.Run("OtherDatabase", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		other := s.opts.OpenElsewhere(t, b.drv)
		for _, migrated := range []bool{false, true} {
			if migrated {
				require.NoError(t, other.Migrate(b.ctx))
			}
			app := s.opts.BeginAppTx(t, other)
			exec, err := b.drv.UnwrapTx(b.ctx, app.Tx)
			require.ErrorIs(t, err, driver.ErrWrongDatabase, "migrated: %v", migrated)
			require.ErrorContains(t, err, "begin the transaction on the backend's database")
			require.Nil(t, exec)
			if !migrated {
				require.NoError(t, app.Commit(b.ctx), "the refused transaction stays usable")
				continue
			}
			own, err := other.UnwrapTx(b.ctx, app.Tx)
			require.NoError(t, err)
			p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
				Status: driver.PipelinePending, Input: []byte(`{}`), Now: b.now}
			_, err = insertOne(b.ctx, own, p)
			require.NoError(t, err, "the refused transaction stays usable")
			require.NoError(t, app.Commit(b.ctx))
			for drv, want := range map[driver.Driver]int{b.drv: 0, other: 1} {
				pipes, err := drv.Reader().PipelineList(b.ctx, &driver.PipelineListParams{})
				require.NoError(t, err)
				require.Len(t, pipes, want)
			}
		}
	})

	t.Run("ConflictInsideAppTx", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		app := s.opts.BeginAppTx(t, b.drv)
		exec, err := b.drv.UnwrapTx(b.ctx, app.Tx)
		require.NoError(t, err)
		err = exec.ChangeSetApply(b.ctx, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelineCompleted, Now: b.now}}})
		require.ErrorIs(t, err, driver.ErrConflict)
		require.NoError(t, app.Rollback(b.ctx))
		require.Equal(t, driver.PipelinePending, b.getPipeline(t, p.ID).Status)
	})

	t.Run("NotFoundInsideAppTx", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		app := s.opts.BeginAppTx(t, b.drv)
		exec, err := b.drv.UnwrapTx(b.ctx, app.Tx)
		require.NoError(t, err)
		_, err = exec.PipelineGet(b.ctx, uuid.New())
		require.ErrorIs(t, err, driver.ErrNotFound)
		require.False(t, errors.Is(err, driver.ErrTransient))
		require.NoError(t, app.Rollback(b.ctx))
	})
}
