package cloacina

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Cancel locks a run tree in id order, in one call, like every other
// locker of several runs. A child whose start committed after Cancel's
// first (unlocked) read of the tree is found by a second read, once the
// first locks are held; locked then on top of a later id, it broke that
// order and deadlocked (40P01) with a transaction locking both children
// in order, as a completion does. Cancel now begins again instead.
func TestCancelLocksALateChildInIDOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	wf := MustWorkflow("w", Task{Name: "a", Run: ok})
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	d := r.Driver().(*postgres.Driver)
	runs := pgx.Identifier{d.Schema()}.Sanitize() + ".pipeline_executions"
	start := func() uuid.UUID {
		e, err := r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		return e.ID()
	}
	parent := start()
	late := start() // a child whose start commits after Cancel's first read: the lower id
	seen := start() // a child Cancel's first read finds
	require.Less(t, late.String(), seen.String())
	admin := adminConn(t)
	_, err := admin.Exec(ctx, "UPDATE "+runs+" SET parent_pipeline_execution_id = $1 WHERE id = $2", parent, seen)
	require.NoError(t, err)
	begin := func() (pgx.Tx, string, uint32) {
		tx, err := d.Pool().Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		var xid string
		var pid uint32
		require.NoError(t, tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text, pg_backend_pid()").Scan(&xid, &pid))
		return tx, xid, pid
	}
	waits := func(what, query string, arg any) {
		t.Helper()
		require.Eventually(t, func() bool {
			var n int
			return admin.QueryRow(ctx, query, arg).Scan(&n) == nil && n > 0
		}, testTimeout, 2*time.Millisecond, what)
	}
	const waitsOnXid = "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND transactionid::text = $1 AND NOT granted"

	// holder keeps the seen child's row, so that Cancel's first locks
	// wait for it; starter plays the late child's start, holding the
	// parent (as lockParents does) while it links the child to it.
	holder, holderXid, _ := begin()
	_, err = holder.Exec(ctx, "SELECT 1 FROM "+runs+" WHERE id = $1 FOR UPDATE", seen)
	require.NoError(t, err)
	starter, starterXid, _ := begin()
	_, err = starter.Exec(ctx, "SELECT 1 FROM "+runs+" WHERE id = $1 FOR UPDATE", parent)
	require.NoError(t, err)
	_, err = starter.Exec(ctx, "UPDATE "+runs+" SET parent_pipeline_execution_id = $1 WHERE id = $2", parent, late)
	require.NoError(t, err)

	cancelled := make(chan error, 1)
	go func() { cancelled <- r.Cancel(ctx, parent) }()
	waits("Cancel to wait for the parent held by the start", waitsOnXid, starterXid)
	require.NoError(t, starter.Commit(ctx))
	waits("Cancel to wait for the seen child", waitsOnXid, holderXid)

	// A completion's lock of both children, in id order: the late child,
	// then the seen one (behind Cancel).
	completion, _, completionPid := begin()
	locked := make(chan error, 1)
	go func() {
		_, err := completion.Exec(ctx, "SELECT id FROM "+runs+" WHERE id = ANY($1) ORDER BY id FOR UPDATE", []uuid.UUID{late, seen})
		locked <- err
	}()
	waits("the completion to hold the late child and wait", "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", int64(completionPid))
	require.NoError(t, holder.Rollback(ctx))

	err = waitFor(t, locked, "the completion's locks")
	var pgErr *pgconn.PgError
	require.False(t, errors.As(err, &pgErr) && pgErr.Code == "40P01", "the completion deadlocked with Cancel: %v", err)
	require.NoError(t, err)
	require.NoError(t, completion.Commit(ctx))
	require.NoError(t, waitFor(t, cancelled, "Cancel"))
	for _, id := range []uuid.UUID{parent, late, seen} {
		res, err := r.Get(ctx, id)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status, "run %s", id)
	}
}
