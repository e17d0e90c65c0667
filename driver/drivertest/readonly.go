package drivertest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A read-only Driver reads what writers commit, while they are live, and
// can change nothing: the backend refuses its writes, not just the engine.
func testReadOnly(t *testing.T, s *suite) {
	t.Run("ReadsWhatLiveWritersCommit", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		first := b.insertPipeline(t)
		ro := s.opts.OpenReadOnly(t, b.drv)

		current, latest, err := ro.MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, latest, current)
		p, err := ro.Reader().PipelineGet(b.ctx, first.ID)
		require.NoError(t, err)
		require.Equal(t, first.WorkflowName, p.WorkflowName)

		// The writer keeps going while the reader is open.
		second := b.insertPipeline(t, createdAt(b.at(time.Minute)))
		b.apply(t, &driver.ChangeSet{Events: []driver.EventInsert{event(second.ID, nil, driver.EventPipelineStarted, b.at(time.Minute))}})
		ps, err := ro.Reader().PipelineList(b.ctx, &driver.PipelineListParams{Limit: 10})
		require.NoError(t, err)
		require.Equal(t, []uuid.UUID{second.ID, first.ID}, pipelineIDs(ps))
		evs, err := ro.Reader().EventList(b.ctx, &driver.EventListParams{PipelineID: &second.ID})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, driver.EventPipelineStarted, evs[0].Type)
	})

	t.Run("RefusesWrites", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		ro := s.opts.OpenReadOnly(t, b.drv)

		_, err := ro.Begin(b.ctx)
		require.ErrorIs(t, err, driver.ErrReadOnly)
		require.ErrorIs(t, ro.Migrate(b.ctx), driver.ErrReadOnly)

		// Statements outside a transaction are refused by the database.
		p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: b.now}
		_, err = ro.Reader().PipelineInsertMany(b.ctx, []*driver.PipelineInsertParams{p})
		require.Error(t, err, "a write through a read-only driver's reader")
		_, err = b.drv.Reader().PipelineGet(b.ctx, p.ID)
		require.ErrorIs(t, err, driver.ErrNotFound, "the refused write left a row")
		_, err = ro.Reader().EventDelete(b.ctx, &driver.EventDeleteParams{Before: b.at(time.Hour), Limit: 10})
		require.Error(t, err, "a delete through a read-only driver's reader")

		// The writer is unaffected.
		b.insertPipeline(t)
	})

	t.Run("SchemaTooNew", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		_, latest, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		s.opts.RecordMigration(t, b.drv, latest+1)
		current, latest2, err := s.opts.OpenReadOnly(t, b.drv).MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, latest+1, current)
		require.Equal(t, latest, latest2)
	})
}
