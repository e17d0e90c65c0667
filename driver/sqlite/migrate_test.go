package sqlite_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Migration 8 adds the parent of a run and drops the lease table that
// migration 7 replaced. A database at version 7 keeps its runs, which have
// no parent, and takes runs with parents afterwards.
func TestMigrationToRunParentsKeepsRuns(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv := open(t, testdb.SQLitePath(t))
	require.NoError(t, sqlite.MigrateTo(ctx, drv, 7))
	old := uuid.New()
	_, err := drv.DB().ExecContext(ctx, `INSERT INTO pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
		VALUES (?, 'wf', 'v1', 'running', '{"a":1}', '2025-01-02T03:04:05.000000Z', '2025-01-02T03:04:05.000000Z')`, old.String())
	require.NoError(t, err)
	_, err = drv.DB().ExecContext(ctx, `INSERT INTO cloacina_leases (name, holder, expires_at) VALUES ('leader', 'r', '2025-01-02T03:04:05.000000Z')`)
	require.NoError(t, err)

	require.NoError(t, drv.Migrate(ctx))
	current, latest, err := drv.MigrationVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, latest, current)

	var n int
	require.NoError(t, drv.DB().QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE name = 'cloacina_leases'").Scan(&n))
	require.Zero(t, n, "the old lease table is gone")
	p, err := drv.Reader().PipelineGet(ctx, old)
	require.NoError(t, err)
	require.Equal(t, driver.PipelineRunning, p.Status)
	require.JSONEq(t, `{"a":1}`, string(p.Input))
	require.Nil(t, p.ParentPipelineID, "a run from before the migration has no parent")
	require.Nil(t, p.ParentTaskID)

	task := uuid.New()
	child := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1", Status: driver.PipelinePending,
		Input: []byte(`{}`), Now: p.CreatedAt, ParentPipelineID: &old, ParentTaskID: &task}
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.PipelineInsertMany(ctx, []*driver.PipelineInsertParams{child})
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	children, err := drv.Reader().PipelineList(ctx, &driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{old}})
	require.NoError(t, err)
	require.Len(t, children, 1)
	require.Equal(t, child.ID, children[0].ID)
	require.Equal(t, task, *children[0].ParentTaskID)
}

// Migration 11 adds the task name that run retention keeps on events. A
// database at version 10 keeps its events, unnamed; they take their name
// from their task while it exists, and from the copy once run retention
// deletes the task.
func TestMigrationToEventTaskNamesKeepsEvents(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv := open(t, testdb.SQLitePath(t))
	require.NoError(t, sqlite.MigrateTo(ctx, drv, 10))
	pid, tid := uuid.New(), uuid.New()
	const at = "2025-01-02T03:04:05.000000Z"
	for _, q := range []string{
		`INSERT INTO pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, completed_at, updated_at)
			VALUES (?1, 'wf', 'v1', 'failed', '{}', ?3, ?3, ?3)`,
		`INSERT INTO task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status, attempt, max_attempts, created_at, updated_at)
			VALUES (?2, ?1, 'wf', 'charge_card', 0, 'failed', 1, 1, ?3, ?3)`,
		`INSERT INTO execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
			VALUES (lower(hex(randomblob(16))), ?1, NULL, 'pipeline_started', '{}', 'w', ?3),
				(lower(hex(randomblob(16))), ?1, ?2, 'task_failed', '{}', 'w', ?3)`,
	} {
		_, err := drv.DB().ExecContext(ctx, q, pid.String(), tid.String(), at)
		require.NoError(t, err)
	}

	require.NoError(t, drv.Migrate(ctx))
	var unnamed int
	require.NoError(t, drv.DB().QueryRowContext(ctx, "SELECT count(*) FROM execution_events WHERE task_name IS NULL").Scan(&unnamed))
	require.Equal(t, 2, unnamed, "existing events stay unnamed")
	names := func() []string {
		t.Helper()
		events, err := drv.Reader().EventList(ctx, &driver.EventListParams{PipelineID: &pid})
		require.NoError(t, err)
		var out []string
		for _, ev := range events {
			out = append(out, ev.TaskName)
		}
		return out
	}
	require.Equal(t, []string{"", "charge_card"}, names(), "named by their task")

	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	ids, err := tx.PipelineDeleteFinished(ctx, &driver.PipelineDeleteParams{Before: time.Now(), Limit: 10})
	require.NoError(t, err)
	require.Len(t, ids, 1)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, []string{"", "charge_card"}, names(), "named by the copy on the event, once the task is gone")
}

// Opening a database that is up to date takes no write lock: another
// process may hold it for longer than the busy timeout (an application's
// long transaction), and an open used to wait for it and then fail with
// "database is locked".
func TestMigrateUpToDateTakesNoWriteLock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := testdb.SQLitePath(t)
	first := open(t, path)
	require.NoError(t, first.Migrate(ctx))

	db, err := sql.Open("sqlite", sqlite.DSN(path))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
	require.NoError(t, err)
	t.Cleanup(func() { conn.ExecContext(context.Background(), "ROLLBACK") })

	second := open(t, path)
	migrated := make(chan error, 1)
	go func() { migrated <- second.Migrate(ctx) }()
	select {
	case err := <-migrated:
		require.NoError(t, err)
	case <-time.After(sqlite.BusyTimeout / 2):
		t.Fatalf("Migrate of an up-to-date database waited for the write lock another connection holds")
	}
}
