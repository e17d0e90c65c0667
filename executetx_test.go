package cloacina

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// appTx begins a transaction of the application's own, on the same
// database as the runner, with one row of application data in it.
func appTx(t *testing.T, r *Runner) (tx any, commit, rollback func() error, appRows func() int) {
	t.Helper()
	ctx := testContext(t)
	switch d := r.Driver().(type) {
	case *postgres.Driver:
		table := pgx.Identifier{d.Schema(), "orders"}.Sanitize()
		_, err := d.Pool().Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table+" (id serial PRIMARY KEY)")
		require.NoError(t, err)
		ptx, err := d.Pool().Begin(ctx)
		require.NoError(t, err)
		_, err = ptx.Exec(ctx, "INSERT INTO "+table+" DEFAULT VALUES")
		require.NoError(t, err)
		return ptx, func() error { return ptx.Commit(ctx) }, func() error { return ptx.Rollback(ctx) }, func() int {
			var n int
			require.NoError(t, d.Pool().QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n))
			return n
		}
	case *sqlite.Driver:
		_, err := d.DB().ExecContext(ctx, "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
		require.NoError(t, err)
		stx, err := d.DB().BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = stx.ExecContext(ctx, "INSERT INTO orders DEFAULT VALUES")
		require.NoError(t, err)
		return stx, stx.Commit, stx.Rollback, func() int {
			var n int
			require.NoError(t, d.DB().QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&n))
			return n
		}
	}
	t.Fatalf("unknown driver %T", r.Driver())
	return nil, nil, nil, nil
}

func TestExecuteTxCommit(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("ship", Task{Name: "a", Run: setKey("shipped", true)})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		appRows := shipInAppTx(t, r)
		require.Equal(t, 1, appRows())
	})
}

// shipInAppTx starts a run of "ship" in an application transaction,
// commits it and waits for the run to complete.
func shipInAppTx(t *testing.T, r *Runner) (appRows func() int) {
	t.Helper()
	ctx := testContext(t)
	tx, commit, _, appRows := appTx(t, r)
	exec, err := r.ExecuteTx(ctx, tx, "ship", nil)
	require.NoError(t, err)
	require.NoError(t, commit())
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	return appRows
}

// On PostgreSQL a run started in the application's transaction wakes the
// runners when that transaction commits (NOTIFY travels with it), as any
// other start does: with an hour-long poll, only the NOTIFY can get it run.
func TestExecuteTxWakesRunnersOnPostgres(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	wf := MustWorkflow("ship", Task{Name: "a", Run: setKey("shipped", true)})
	r := startRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
	d := r.Driver().(*postgres.Driver)
	// The runner looks for work once it is subscribed, which would find the
	// run without a NOTIFY: wait until its LISTEN is in place.
	var channel string
	require.NoError(t, d.Pool().QueryRow(ctx, "SELECT name FROM "+pgx.Identifier{d.Schema(), "cloacina_channel"}.Sanitize()).Scan(&channel))
	require.Eventually(t, func() bool {
		var n int
		err := d.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' || $1 || '%'`, channel).Scan(&n)
		return err == nil && n > 0
	}, testTimeout, 5*time.Millisecond, "the runner never subscribed")
	shipInAppTx(t, r)
}

func TestExecuteTxRollback(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		tx, _, rollback, appRows := appTx(t, r)
		exec, err := r.ExecuteTx(ctx, tx, "ship", nil)
		require.NoError(t, err)
		require.NoError(t, rollback())
		_, err = exec.Wait(ctx)
		require.ErrorIs(t, err, ErrRunNotFound, "the run exists only if the transaction commits")
		runs, err := r.List(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, runs)
		evs, err := r.Events(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, evs)
		require.Zero(t, appRows())
	})
}

func TestExecuteTxWrongTransactionType(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		var wrong any = &sql.Tx{}
		if _, isSQLite := r.Driver().(*sqlite.Driver); isSQLite {
			wrong = context.Background()
		}
		_, err := r.ExecuteTx(testContext(t), wrong, "ship", nil)
		require.ErrorContains(t, err, "transaction type does not match the database backend")
	})
}
