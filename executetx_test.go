package cloacina

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// appTx begins a transaction of the application's own, on the same
// database as the runner, with one row of application data in it. A
// transaction still open when the test ends is rolled back before the
// runner closes.
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
		t.Cleanup(func() { ptx.Rollback(context.Background()) })
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
		t.Cleanup(func() { stx.Rollback() })
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

// On SQLite, which has no NOTIFY, the runner that started a run in the
// application's transaction looks for its work at short intervals after
// ExecuteTx: with an hour-long poll, only those looks can get it run. It
// used to wait for the poll. The second run is committed after its
// transaction stayed open for a while, as the runner's looks go on.
func TestExecuteTxOnSQLiteIsPickedUpSoonAfterTheCommit(t *testing.T) {
	t.Parallel()
	wf := MustWorkflow("ship", Task{Name: "a", Run: setKey("shipped", true)})
	r := openRunner(t, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
	waitStartedIdle(t, r)
	shipInAppTx(t, r)

	ctx := testContext(t)
	idle := claimerIdle(r)
	tx, commit, _, _ := appTx(t, r)
	exec, err := r.ExecuteTx(ctx, tx, "ship", nil)
	require.NoError(t, err)
	for range 3 { // the claimer looked, found nothing, and waits again
		waitFor(t, idle, "the claimer to look for the work")
	}
	require.NoError(t, commit())
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
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
		if _, isSQL := wrong.(*sql.Tx); isSQL {
			require.ErrorContains(t, err, "got a *sql.Tx: begin the transaction with pgx instead", "the fix is named")
		}
	})
}

func TestExecuteTxOnAnotherSQLiteFile(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
	a := openRunner(t, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{wf}})
	b := openRunner(t, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{wf}})
	tx, err := b.Driver().(*sqlite.Driver).DB().BeginTx(ctx, nil)
	require.NoError(t, err)
	exec, err := a.ExecuteTx(ctx, tx, "ship", nil)
	if err == nil {
		require.NoError(t, tx.Commit())
		_, getErr := a.Get(ctx, exec.ID())
		runsB, _ := b.List(ctx, nil)
		t.Logf("runner a's Get: %v; runs in b's file: %d", getErr, len(runsB))
	} else {
		_ = tx.Rollback()
	}
	require.Error(t, err, "ExecuteTx accepted a transaction on another database file")
}

func TestExecuteTxOnUnmigratedSQLiteFile(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
	a := openRunner(t, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{wf}})
	db := openRawSQLite(t, testdb.SQLitePath(t))
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = a.ExecuteTx(ctx, tx, "ship", nil)
	t.Logf("error: %v", err)
	require.Error(t, err)
	require.ErrorIs(t, err, ErrWrongDatabase)
	require.ErrorContains(t, err, "which is not a Cloacina database")
	require.ErrorContains(t, err, "begin the transaction on the backend's database")
	require.ErrorContains(t, err, "Runner.Driver().(*sqlite.Driver).DB()")
	require.NotContains(t, err.Error(), "no such table")
}

// otherDatabaseURL is the URL of another database than r's for a runner
// like r: a SQLite file of its own, or r's schema in another PostgreSQL
// database of the server.
func otherDatabaseURL(t *testing.T, r *Runner) string {
	t.Helper()
	if d, ok := r.Driver().(*postgres.Driver); ok {
		return testdb.WithSchema(testdb.OtherDatabaseURL(t, d.Schema()), d.Schema())
	}
	return testdb.SQLiteURL(t)
}

// unmigratedTx begins a transaction on another database than r's that
// Cloacina never touched: a new SQLite file, or another PostgreSQL
// database that has no schema of r's name.
func unmigratedTx(t *testing.T, r *Runner) (tx any, commit func() error) {
	t.Helper()
	ctx := testContext(t)
	if d, ok := r.Driver().(*postgres.Driver); ok {
		conn, err := pgx.Connect(ctx, testdb.OtherDatabaseURL(t, d.Schema()))
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		ptx, err := conn.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { ptx.Rollback(context.Background()) })
		return ptx, func() error { return ptx.Commit(ctx) }
	}
	stx, err := openRawSQLite(t, testdb.SQLitePath(t)).BeginTx(ctx, nil)
	require.NoError(t, err)
	t.Cleanup(func() { stx.Rollback() })
	return stx, stx.Commit
}

// requireWrongDatabase checks that err refuses a transaction on another
// database, in words naming where it is and the fix.
func requireWrongDatabase(t *testing.T, r *Runner, err error, migrated bool) {
	t.Helper()
	require.ErrorIs(t, err, ErrWrongDatabase)
	require.ErrorContains(t, err, "begin the transaction on the backend's database")
	switch d := r.Driver().(type) {
	case *postgres.Driver:
		require.ErrorContains(t, err, "Runner.Driver().(*postgres.Driver).Pool()")
		require.ErrorContains(t, err, `the transaction is on database "`+testdb.OtherDatabase+`"`)
		if migrated {
			require.ErrorContains(t, err, `which has Cloacina tables of its own in schema "`+d.Schema()+`"`)
		} else {
			require.ErrorContains(t, err, `which has no Cloacina tables in schema "`+d.Schema()+`"`)
		}
	case *sqlite.Driver:
		require.ErrorContains(t, err, "Runner.Driver().(*sqlite.Driver).DB()")
		require.ErrorContains(t, err, "this backend's database is "+d.Path())
		if migrated {
			require.ErrorContains(t, err, "another Cloacina database")
		} else {
			require.ErrorContains(t, err, "which is not a Cloacina database")
		}
	}
}

// requireNoRuns checks that r's database holds no run and no event.
func requireNoRuns(t *testing.T, r *Runner) {
	t.Helper()
	ctx := testContext(t)
	runs, err := r.List(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, runs)
	evs, err := r.Events(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, evs)
}

// A transaction on another Cloacina database (another tenant's SQLite
// file; the same schema in another PostgreSQL database) is refused: the
// run would be written there, where this runner never finds it and that
// database's runners run it. Nothing is written, and the application's
// transaction goes on.
func TestExecuteTxOnAnotherDatabase(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
		a := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		b := openRunner(t, otherDatabaseURL(t, a), &Config{Workflows: []*Workflow{wf}})
		tx, commit, _, appRows := appTx(t, b)
		exec, err := a.ExecuteTx(ctx, tx, "ship", nil)
		requireWrongDatabase(t, a, err, true)
		require.Nil(t, exec)
		require.NoError(t, commit(), "the refused transaction stays usable")
		require.Equal(t, 1, appRows())
		requireNoRuns(t, a)
		requireNoRuns(t, b)
	})
}

// A transaction on a database Cloacina never migrated is refused as being
// elsewhere, rather than failing on a missing table.
func TestExecuteTxOnUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
		a := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		tx, commit := unmigratedTx(t, a)
		_, err := a.ExecuteTx(testContext(t), tx, "ship", nil)
		requireWrongDatabase(t, a, err, false)
		require.NotContains(t, err.Error(), "does not exist")
		require.NotContains(t, err.Error(), "no such table")
		require.NoError(t, commit(), "the refused transaction stays usable")
		requireNoRuns(t, a)
	})
}

// The runner's file reached by another path (a symbolic link to its
// directory, whose name holds characters SQLite URIs escape) is the same
// database: ExecuteTx accepts a transaction on it.
func TestExecuteTxOnSQLiteFileByAnotherPath(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "team#1 %41?x")
	require.NoError(t, os.Mkdir(dir, 0o755))
	link := filepath.Join(t.TempDir(), "link")
	require.NoError(t, os.Symlink(dir, link))
	wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
	r := startRunner(t, "sqlite://"+filepath.Join(link, "cloacina.db"), &Config{Workflows: []*Workflow{wf}})
	tx, err := openRawSQLite(t, filepath.Join(dir, "cloacina.db")).BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	exec, err := r.ExecuteTx(ctx, tx, "ship", nil)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
}

// An application transaction under a role that may not call
// pg_control_system (SET ROLE, in a database where the function's right
// was revoked) is checked by database name alone: ExecuteTx works and
// leaves the transaction usable. The check used to call the function in
// any case, which failed and aborted the application's transaction.
func TestExecuteTxUnderARoleThatMayNotReadTheServerID(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	admin := adminConn(t)
	db := pgx.Identifier{"cloacina_norole_" + uuid.NewString()[:8]}
	role := pgx.Identifier{"cloacina_norole_" + uuid.NewString()[:8]}
	_, err := admin.Exec(ctx, "CREATE DATABASE "+db.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db.Sanitize()+" WITH (FORCE)")
		_, _ = admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+role.Sanitize())
	})
	_, err = admin.Exec(ctx, "CREATE ROLE "+role.Sanitize())
	require.NoError(t, err)

	u, err := url.Parse(testdb.PostgresURL())
	require.NoError(t, err)
	u.Path = "/" + db[0]
	q := u.Query()
	q.Set("schema", "app")
	u.RawQuery = q.Encode()
	r := openRunner(t, u.String(), &Config{Workflows: []*Workflow{MustWorkflow("w", Task{Name: "a", Run: ok})}})
	pool := r.Driver().(*postgres.Driver).Pool()
	for _, stmt := range []string{
		"REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC", // in this database only
		"GRANT USAGE ON SCHEMA app TO " + role.Sanitize(),
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO " + role.Sanitize(),
	} {
		_, err := pool.Exec(ctx, stmt)
		require.NoError(t, err, stmt)
	}

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.Background())
	_, err = tx.Exec(ctx, "SET LOCAL ROLE "+role.Sanitize())
	require.NoError(t, err)
	exec, err := r.ExecuteTx(ctx, tx, "w", nil)
	require.NoError(t, err)
	var one int
	require.NoError(t, tx.QueryRow(ctx, "SELECT 1").Scan(&one), "the transaction is still usable")
	require.NoError(t, tx.Commit(ctx))
	_, err = r.Get(ctx, exec.ID())
	require.NoError(t, err)
}

// refuseTask makes r's database refuse to insert a task named name, from
// whatever connection: it stands for any write of a start the database
// refuses part way (a disk full, the caller's context ending between two
// statements).
func refuseTask(t *testing.T, r *Runner, name string) {
	t.Helper()
	ctx := testContext(t)
	switch d := r.Driver().(type) {
	case *postgres.Driver:
		s := pgx.Identifier{d.Schema()}.Sanitize()
		_, err := d.Pool().Exec(ctx, `CREATE FUNCTION `+s+`.refuse_task() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
				RAISE EXCEPTION 'task refused'; END $$;
			CREATE TRIGGER refuse_task BEFORE INSERT ON `+s+`.task_executions
				FOR EACH ROW WHEN (NEW.task_name = '`+name+`') EXECUTE FUNCTION `+s+`.refuse_task()`)
		require.NoError(t, err)
	case *sqlite.Driver:
		_, err := d.DB().ExecContext(ctx, `CREATE TRIGGER refuse_task BEFORE INSERT ON task_executions
			WHEN NEW.task_name = '`+name+`' BEGIN SELECT RAISE(ABORT, 'task refused'); END`)
		require.NoError(t, err)
	}
}

// A start the database refuses part way leaves nothing of the run in the
// application's transaction: an application that commits its own rows all
// the same (on SQLite a refused statement leaves the transaction usable;
// PostgreSQL aborts it) must not commit half a run, a run row without its
// tasks that stays Pending forever. ExecuteTx used to write the run in
// several statements with nothing to take back the first when a later one
// failed.
func TestExecuteTxRefusedLeavesNothingInTheTransaction(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("ship", Task{Name: "a", Run: ok}, Task{Name: "refused", Run: ok, DependsOn: []string{"a"}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		refuseTask(t, r, "refused")
		tx, commit, _, appRows := appTx(t, r)
		exec, err := r.ExecuteTx(ctx, tx, "ship", nil)
		require.ErrorContains(t, err, "task refused")
		require.Nil(t, exec)
		if err := commit(); err != nil {
			t.Logf("commit after the refused start: %v", err) // PostgreSQL: aborted
		}
		requireNoRuns(t, r)
		if _, isSQLite := r.Driver().(*sqlite.Driver); isSQLite {
			require.Equal(t, 1, appRows(), "the application's own rows commit")
		}
	})
}
