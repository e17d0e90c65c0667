package postgres_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/drivertest"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestMain(m *testing.M) {
	drivertest.ServeClaimerProcess(func(ctx context.Context, schema string) (driver.Driver, error) {
		return postgres.Open(ctx, testdb.PostgresURL(), &postgres.Opts{Schema: schema})
	})
	goleak.VerifyTestMain(m)
}

// open opens a driver on schema with a small pool: many tests run at
// once against one server. params are URL parameters, in pairs.
func open(t *testing.T, schema string, params ...string) *postgres.Driver {
	t.Helper()
	return openWith(t, &postgres.Opts{Schema: schema}, params...)
}

// openWith is open with options of the test's choosing.
func openWith(t *testing.T, opts *postgres.Opts, params ...string) *postgres.Driver {
	t.Helper()
	drv, err := postgres.Open(t.Context(), testURL(t, params...), opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	return drv
}

// testURL is the test database's URL with a small pool and params (in
// pairs) added.
func testURL(t *testing.T, params ...string) string {
	t.Helper()
	return withParams(t, testdb.PostgresURL(), params...)
}

// withParams is raw with a small pool and params (in pairs) added.
func withParams(t *testing.T, raw string, params ...string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	q := u.Query()
	q.Set("pool_max_conns", "4")
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func TestConformance(t *testing.T) {
	opts := conformanceOptions()
	opts.SpawnClaimer = func(t *testing.T, drv driver.Driver, cfg drivertest.ClaimerConfig) *drivertest.ClaimerProcess {
		return drivertest.StartClaimerProcess(t, drv.(*postgres.Driver).Schema(), cfg)
	}
	drivertest.Run(t, func(t *testing.T) driver.Driver { return open(t, testdb.NewSchema(t)) }, opts)
}

// conformanceOptions are the conformance suite's hooks for drivers opened
// with the URL parameters params (in pairs): siblings and read-only
// drivers on the same schema, application transactions on the driver's
// pool, and migrations recorded behind the code's back.
func conformanceOptions(params ...string) *drivertest.Options {
	return &drivertest.Options{
		OpenSibling: func(t *testing.T, drv driver.Driver) driver.Driver {
			return open(t, drv.(*postgres.Driver).Schema(), params...)
		},
		OpenReadOnly: func(t *testing.T, drv driver.Driver) driver.Driver {
			return openWith(t, &postgres.Opts{Schema: drv.(*postgres.Driver).Schema(), ReadOnly: true}, params...)
		},
		BeginAppTx: func(t *testing.T, drv driver.Driver) *drivertest.AppTx {
			tx, err := drv.(*postgres.Driver).Pool().Begin(t.Context())
			require.NoError(t, err)
			t.Cleanup(func() { tx.Rollback(context.Background()) })
			return &drivertest.AppTx{Tx: tx, Commit: tx.Commit, Rollback: tx.Rollback}
		},
		OpenElsewhere: func(t *testing.T, drv driver.Driver) driver.Driver {
			schema := drv.(*postgres.Driver).Schema()
			other, err := postgres.Open(t.Context(), withParams(t, testdb.OtherDatabaseURL(t, schema), params...), &postgres.Opts{Schema: schema})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, other.Close()) })
			return other
		},
		RecordMigration: func(t *testing.T, drv driver.Driver, version int) {
			d := drv.(*postgres.Driver)
			_, err := d.Pool().Exec(t.Context(), "INSERT INTO "+pgx.Identifier{d.Schema(), "cloacina_migrations"}.Sanitize()+
				" (version, name) VALUES ($1, 'from_the_future')", version)
			require.NoError(t, err)
		},
		ConcurrentTx: true,
	}
}

func TestValidateSchema(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"public", "tenant_1", "_x", "A", strings.Repeat("s", 63)} {
		require.NoError(t, postgres.ValidateSchema(name), name)
	}
	for _, name := range []string{"", "1tenant", "tenant-1", "tenant 1", `te"nant`, "tenant;drop", "ténant",
		strings.Repeat("s", 64), "pg_catalog", "PG_temp", "information_schema"} {
		require.Error(t, postgres.ValidateSchema(name), name)
	}
	_, err := postgres.New(nil, nil)
	require.ErrorContains(t, err, "postgres.Open", "a nil pool is refused, not dereferenced")
}

func TestNewOnApplicationPool(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, err := pgxpool.New(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer pool.Close()
	_, err = postgres.New(pool, &postgres.Opts{Schema: "1bad"})
	require.ErrorContains(t, err, "invalid schema name")

	schema := testdb.NewSchema(t)
	drv, err := postgres.New(pool, &postgres.Opts{Schema: schema})
	require.NoError(t, err)
	require.Equal(t, "postgres", drv.Name())
	require.Equal(t, schema, drv.Schema())
	require.Same(t, pool, drv.Pool())
	require.NoError(t, drv.Migrate(ctx))
	require.NoError(t, drv.Close())
	require.NoError(t, pool.Ping(ctx), "Close leaves a pool handed to New open")

	def, err := postgres.New(pool, nil)
	require.NoError(t, err)
	require.Equal(t, postgres.DefaultSchema, def.Schema())
}

// longSchema returns a 63-byte schema name that starts with prefix,
// dropped when t ends.
func longSchema(t *testing.T, prefix string) string {
	t.Helper()
	base := testdb.NewSchema(t) + prefix
	name := base + strings.Repeat("x", 63-len(base))
	t.Cleanup(func() { testdb.DropSchema(t, name) })
	return name
}

// Channel names are identifiers (at most 63 bytes): a long schema must
// still get working wake-ups, and two long schemas sharing a prefix must
// not hear each other.
func TestLongSchemaWakeUps(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	a := open(t, longSchema(t, "a"))
	b := open(t, strings.TrimSuffix(a.Schema(), "x")+"y")
	t.Cleanup(func() { testdb.DropSchema(t, b.Schema()) })
	for _, d := range []*postgres.Driver{a, b} {
		require.Len(t, d.Schema(), 63)
		require.NoError(t, d.Migrate(ctx))
	}
	sub, err := b.Listen(ctx)
	require.NoError(t, err)
	defer sub.Close()
	for _, d := range []*postgres.Driver{a, b} {
		tx, err := d.Begin(ctx)
		require.NoError(t, err)
		require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Notify: []string{"from " + d.Schema()}}))
		require.NoError(t, tx.Commit(ctx))
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := sub.Wait(wctx)
	require.NoError(t, err)
	require.Equal(t, "from "+b.Schema(), got)
}

// The schema is created by Migrate, and nothing runs outside it.
func TestSchemaIsolation(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	a, b := open(t, testdb.NewSchema(t)), open(t, testdb.NewSchema(t))
	require.NoError(t, a.Migrate(ctx))
	current, _, err := b.MigrationVersion(ctx)
	require.NoError(t, err)
	require.Zero(t, current, "migrating one schema leaves another untouched")
	require.NoError(t, b.Migrate(ctx))
	tx, err := a.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.EventCount(ctx, &driver.EventCountParams{})
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
}

func TestSerializationFailureIsTransient(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv := open(t, testdb.NewSchema(t))
	require.NoError(t, drv.Migrate(ctx))
	id := insertPipeline(t, drv)

	// An application transaction at REPEATABLE READ whose snapshot
	// predates a concurrent update of the same row.
	app, err := drv.Pool().BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer app.Rollback(context.Background())
	exec, err := drv.UnwrapTx(ctx, app)
	require.NoError(t, err)
	_, err = exec.PipelineGet(ctx, id)
	require.NoError(t, err)

	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
		{ID: id, FromStatus: driver.PipelinePending, Status: driver.PipelinePaused, Now: time.Now()}}}))
	require.NoError(t, tx.Commit(ctx))

	err = exec.ChangeSetApply(ctx, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
		{ID: id, FromStatus: driver.PipelinePending, Status: driver.PipelineCancelled, Now: time.Now()}}})
	require.ErrorIs(t, err, driver.ErrTransient)
	require.NotErrorIs(t, err, driver.ErrConflict)
}

func TestDeadlockIsTransient(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// Detect the deadlock quickly rather than after the default second.
	drv := open(t, testdb.NewSchema(t), "deadlock_timeout", "20ms")
	require.NoError(t, drv.Migrate(ctx))
	a, b := insertPipeline(t, drv), insertPipeline(t, drv)
	// touch updates a row now (a read after ChangeSetApply sends the writes
	// a transaction would otherwise hold for COMMIT).
	touch := func(tx driver.Tx, id uuid.UUID) error {
		if err := tx.ChangeSetApply(ctx, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: id, FromStatus: driver.PipelinePending, Status: driver.PipelinePending, Now: time.Now()}}}); err != nil {
			return err
		}
		_, err := tx.EventCount(ctx, &driver.EventCountParams{})
		return err
	}
	tx1, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx1.Rollback(context.Background())
	tx2, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx2.Rollback(context.Background())
	require.NoError(t, touch(tx1, a))
	require.NoError(t, touch(tx2, b))

	// Each waits for the other: the deadlock detector aborts one, whose
	// locks go with it, so the other then gets its row.
	errs := make(chan error, 2)
	go func() { errs <- touch(tx1, b) }()
	go func() { errs <- touch(tx2, a) }()
	first, second := <-errs, <-errs
	if first == nil {
		first, second = second, first
	}
	require.NoError(t, second, "the survivor proceeds")
	require.ErrorIs(t, first, driver.ErrTransient, "a deadlock victim is worth retrying")
}

func TestLostListenConnectionIsTransient(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	name := "cloacina_listen_" + strings.TrimPrefix(testdb.NewSchema(t), "test_")
	drv := open(t, testdb.NewSchema(t), "application_name", name)
	require.NoError(t, drv.Migrate(ctx))
	sub, err := drv.Listen(ctx)
	require.NoError(t, err)
	defer sub.Close()

	conn, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND query LIKE 'LISTEN%'`, name).Scan(&n))
	require.Equal(t, 1, n, "the subscription's connection")

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = sub.Wait(wctx)
	require.ErrorIs(t, err, driver.ErrTransient, "a lost subscription is resubscribed")
	require.NotErrorIs(t, err, context.DeadlineExceeded)

	// A new subscription works.
	sub2, err := drv.Listen(ctx)
	require.NoError(t, err)
	defer sub2.Close()
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Notify: []string{"again"}}))
	require.NoError(t, tx.Commit(ctx))
	got, err := sub2.Wait(wctx)
	require.NoError(t, err)
	require.Equal(t, "again", got)
}

func insertPipeline(t *testing.T, drv *postgres.Driver) uuid.UUID {
	t.Helper()
	p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
		Status: driver.PipelinePending, Input: []byte(`{}`), Now: time.Now()}
	tx, err := drv.Begin(t.Context())
	require.NoError(t, err)
	_, err = tx.PipelineInsertMany(t.Context(), []*driver.PipelineInsertParams{p})
	require.NoError(t, err)
	require.NoError(t, tx.Commit(t.Context()))
	return p.ID
}

// UnwrapTx checks the transaction's database against the pool's, which
// the backend read when it opened: it takes no other connection, so an
// application holding the pool's last one in its transaction does not
// wait for itself.
func TestUnwrapTxOnItsPoolsLastConnection(t *testing.T) {
	t.Parallel()
	drv := open(t, testdb.NewSchema(t), "pool_max_conns", "1")
	require.NoError(t, drv.Migrate(t.Context()))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	app, err := drv.Pool().Begin(ctx)
	require.NoError(t, err)
	defer app.Rollback(context.Background())
	exec, err := drv.UnwrapTx(ctx, app)
	require.NoError(t, err)
	p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
		Status: driver.PipelinePending, Input: []byte(`{}`), Now: time.Now()}
	_, err = exec.PipelineInsertMany(ctx, []*driver.PipelineInsertParams{p})
	require.NoError(t, err)
	require.NoError(t, app.Commit(ctx))
	_, err = drv.Reader().PipelineGet(ctx, p.ID)
	require.NoError(t, err)
}

// A connection refused for a setting (no such database, no such role, a
// mistyped query parameter) fails Open with the server's reason and the
// fix, not pgx's reason alone.
func TestOpenRefusalsNameTheFix(t *testing.T) {
	t.Parallel()
	testdb.UsesPostgres(t)
	with := func(change func(u *url.URL)) string {
		u, err := url.Parse(testdb.PostgresURL())
		require.NoError(t, err)
		change(u)
		return u.String()
	}
	for name, tc := range map[string]struct{ url, want string }{
		"no database": {with(func(u *url.URL) { u.Path = "/cloacina_no_such_db" }),
			`database "cloacina_no_such_db" does not exist (SQLSTATE 3D000): create the database (createdb cloacina_no_such_db) or correct its name in the URL`},
		"no role": {with(func(u *url.URL) { u.User = url.User("cloacina_no_such_role") }),
			`role "cloacina_no_such_role" does not exist (SQLSTATE 28000): check the user (cloacina_no_such_role) and password in the URL, PGPASSWORD or ~/.pgpass, and the server's pg_hba.conf`},
		"misspelt parameter": {with(func(u *url.URL) { q := u.Query(); q.Set("schem", "x"); u.RawQuery = q.Encode() }),
			`unrecognized configuration parameter "schem" (SQLSTATE 42704): the URL sets a parameter PostgreSQL does not know: check the spelling of its query parameters (cloacina's own is schema=)`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := postgres.Open(t.Context(), tc.url, nil)
			require.ErrorContains(t, err, tc.want)
			require.NotErrorIs(t, err, driver.ErrTransient, "a refusal for a setting is not worth retrying")
		})
	}
}
