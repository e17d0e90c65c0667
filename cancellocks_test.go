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

// runsToCancel opens a runner on a PostgreSQL schema of its own and
// returns it, its driver, the runs table as its statements name it, and
// a function that starts a one-task run (unclaimed: the runner is not
// started) and returns its id.
func runsToCancel(t *testing.T) (*Runner, *postgres.Driver, string, func() uuid.UUID) {
	t.Helper()
	wf := MustWorkflow("w", Task{Name: "a", Run: ok})
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	d := r.Driver().(*postgres.Driver)
	start := func() uuid.UUID {
		e, err := r.ExecuteAsync(testContext(t), "w", nil)
		require.NoError(t, err)
		return e.ID()
	}
	return r, d, pgx.Identifier{d.Schema()}.Sanitize() + ".pipeline_executions", start
}

// Cancel locks a run tree in id order, in one call, like every other
// locker of several runs. A child whose start committed after Cancel's
// first (unlocked) read of the tree is found by a second read, once the
// first locks are held; locked then on top of a later id, it broke that
// order and deadlocked (40P01) with a transaction locking both children
// in order, as a completion does. Cancel now locks such a child without
// waiting, and begins again when another transaction holds it, as here.
func TestCancelLocksALateChildInIDOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r, d, runs, start := runsToCancel(t)
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

// A stream of child starts that commit while Cancel locks the tree, each
// child with an id before the parent's (drawn earlier, or by a runner
// whose clock lags): Cancel locks each late child without waiting instead
// of beginning again, which gave up after eight such starts with
// ErrConflict, the run not cancelled.
func TestCancelOutlastsLateChildStarts(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r, d, runs, start := runsToCancel(t)
	var late []uuid.UUID // ids before the parent's
	for range 12 {
		late = append(late, start())
	}
	parent := start()
	admin := adminConn(t)
	cancelWaits := func() bool {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND position($1 in query) > 0 AND query LIKE '%FOR UPDATE%'`, runs).Scan(&n)
		return err == nil && n > 0
	}
	// A child's start as lockParents makes it: the parent locked, the
	// child linked to it; open until committed.
	begin := func(child uuid.UUID) (pgx.Tx, error) {
		tx, err := d.Pool().Begin(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "SELECT id FROM "+runs+" WHERE id = $1 FOR UPDATE", parent); err != nil {
			_ = tx.Rollback(ctx)
			return nil, err
		}
		if _, err := tx.Exec(ctx, "UPDATE "+runs+" SET parent_pipeline_execution_id = $1 WHERE id = $2", parent, child); err != nil {
			_ = tx.Rollback(ctx)
			return nil, err
		}
		return tx, nil
	}
	cur, err := begin(late[0])
	require.NoError(t, err)
	cancelled := make(chan error, 1)
	go func() { cancelled <- r.Cancel(ctx, parent) }()
	for k := 1; k < len(late); k++ {
		require.Eventually(t, func() bool { return cancelWaits() || len(cancelled) > 0 }, testTimeout, time.Millisecond)
		if len(cancelled) > 0 {
			break
		}
		// The next start queues behind Cancel's attempt, as a start that
		// began a moment later would.
		next := make(chan pgx.Tx, 1)
		go func(child uuid.UUID) {
			tx, err := begin(child)
			if err != nil {
				tx = nil
			}
			next <- tx
		}(late[k])
		require.NoError(t, cur.Commit(ctx))
		cur = waitFor(t, next, "the next start")
		if cur == nil {
			break // refused: the parent was cancelled meanwhile
		}
	}
	if cur != nil {
		require.NoError(t, cur.Commit(ctx))
	}
	require.NoError(t, waitFor(t, cancelled, "Cancel"))
	got, err := r.Get(ctx, parent)
	require.NoError(t, err)
	require.Equal(t, PipelineCancelled, got.Status)
}
