package cloacina

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// newTenant creates a tenant on the test database, dropped when the test
// ends.
func newTenant(t *testing.T) *Tenant {
	t.Helper()
	name := testdb.NewTenantName(t)
	tn, err := CreateTenant(testContext(t), testdb.PostgresURL(), name, nil)
	require.NoError(t, err)
	return tn
}

// adminConn connects to the test database as the administrator.
func adminConn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), testdb.PostgresURL())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// tenantConn connects as a tenant's role, without Cloacina in between.
func tenantConn(t *testing.T, tn *Tenant) *pgx.Conn {
	t.Helper()
	u, err := ParseDatabaseURL(tn.URL)
	require.NoError(t, err)
	conn, err := pgx.Connect(testContext(t), u.DSN)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// withSchema returns a tenant URL with another schema selected.
func withSchema(t *testing.T, raw, schema string) string {
	t.Helper()
	if schema == "" {
		u, err := ParseDatabaseURL(raw)
		require.NoError(t, err)
		return u.DSN
	}
	return testdb.WithSchema(raw, schema)
}

// requirePermissionDenied requires err to be PostgreSQL's
// insufficient_privilege.
func requirePermissionDenied(t *testing.T, err error, what string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, what)
	require.Equal(t, "42501", pgErr.Code, "%s: %v", what, err)
}

// isolationTenant is one tenant's side of the isolation test.
type isolationTenant struct {
	label   string
	runners []*Runner
	ids     map[string]bool // runner ids
}

// openIsolationTenant opens n runners on url with a workflow named
// "shared" (the same name in every tenant) whose tasks record which
// tenant's runner ran them.
func openIsolationTenant(t *testing.T, url, label string, n int) *isolationTenant {
	t.Helper()
	it := &isolationTenant{label: label, ids: map[string]bool{}}
	for i := range n {
		mark := func(task string) TaskFunc {
			return setKey("ran_by_"+task, fmt.Sprintf("%s/%d", label, i))
		}
		wf, err := NewWorkflow("shared",
			Task{Name: "first", Run: mark("first")},
			Task{Name: "second", DependsOn: []string{"first"}, Run: mark("second")},
		)
		require.NoError(t, err)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 20})
		it.runners = append(it.runners, r)
		it.ids[r.ID()] = true
	}
	return it
}

func (it *isolationTenant) start(t *testing.T, ctx context.Context) {
	for _, r := range it.runners {
		require.NoError(t, r.Start(ctx))
	}
}

// enqueue starts n runs, spread over the tenant's runners.
func (it *isolationTenant) enqueue(t *testing.T, ctx context.Context, n int) []*Execution {
	t.Helper()
	out := make([]*Execution, n)
	for i := range out {
		e, err := it.runners[i%len(it.runners)].ExecuteAsync(ctx, "shared", nil)
		require.NoError(t, err)
		out[i] = e
	}
	return out
}

// finish waits for runs and checks that each completed, run by this
// tenant's runners only.
func (it *isolationTenant) finish(t *testing.T, ctx context.Context, execs []*Execution) {
	t.Helper()
	for _, e := range execs {
		res, err := e.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, res.Error)
		for _, task := range []string{"first", "second"} {
			by, err := Get[string](res.Context, "ran_by_"+task)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(by, it.label+"/"), "task %s of a run of tenant %s ran on %s", task, it.label, by)
		}
	}
}

// testIsolation runs the same workflow name in two tenants at once and
// checks that neither sees nor claims the other's work.
func testIsolation(t *testing.T, urlA, urlB string, queued, load int) {
	// A load test under -race takes longer than testTimeout allows one wait.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := openIsolationTenant(t, urlA, "A", 2)
	b := openIsolationTenant(t, urlB, "B", 2)
	b.start(t, ctx)

	// A's runners are not started: its runs wait in A's outbox while B's
	// runners, registered for a workflow of the same name, work through
	// runs of their own. None of A's tasks may move.
	queuedA := a.enqueue(t, ctx, queued)
	b.finish(t, ctx, b.enqueue(t, ctx, load))
	pending, err := a.runners[0].List(ctx, &ListOpts{Statuses: []PipelineStatus{PipelinePending}, Limit: queued + 1})
	require.NoError(t, err)
	require.Len(t, pending, queued, "B's runners claimed none of A's runs")
	peek, err := a.runners[0].Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{"shared"}, Now: time.Now().UTC()})
	require.NoError(t, err)
	require.True(t, peek.Claimable, "A's outbox rows are visible through A")
	peek, err = b.runners[0].Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{"shared"}, Now: time.Now().UTC()})
	require.NoError(t, err)
	require.False(t, peek.Claimable, "A's outbox rows are not visible through B")

	// Both tenants under load at once.
	a.start(t, ctx)
	var wg sync.WaitGroup
	var execsA, execsB []*Execution
	wg.Go(func() { execsA = a.enqueue(t, ctx, load) })
	wg.Go(func() { execsB = b.enqueue(t, ctx, load) })
	wg.Wait()
	require.Len(t, execsA, load)
	require.Len(t, execsB, load)
	execsA = append(execsA, queuedA...)
	wg.Go(func() { a.finish(t, ctx, execsA) })
	wg.Go(func() { b.finish(t, ctx, execsB) })
	wg.Wait()
	if t.Failed() {
		return
	}

	checkSide := func(own, other *isolationTenant, execs []*Execution, total int) {
		t.Helper()
		runs, err := own.runners[0].List(ctx, &ListOpts{Limit: total + 10})
		require.NoError(t, err)
		require.Len(t, runs, total, "tenant %s sees exactly its own runs", own.label)
		for i, e := range execs {
			if i%25 != 0 {
				continue // a sample is enough for the per-run reads
			}
			evs, err := own.runners[1].RunEvents(ctx, e.ID())
			require.NoError(t, err)
			require.NotEmpty(t, evs)
			for _, ev := range evs {
				require.True(t, own.ids[ev.WorkerID], "event %s of tenant %s was written by runner %s", ev.Type, own.label, ev.WorkerID)
			}
			_, err = other.runners[0].Get(ctx, e.ID())
			require.ErrorIs(t, err, ErrRunNotFound, "tenant %s cannot see %s's run", other.label, own.label)
			evs, err = other.runners[0].RunEvents(ctx, e.ID())
			require.NoError(t, err)
			require.Empty(t, evs, "tenant %s sees no event of %s's run", other.label, own.label)
		}
		claims, err := own.runners[0].Events(ctx, &EventQuery{Types: []EventType{EventTaskClaimed}})
		require.NoError(t, err)
		require.Len(t, claims, 2*total, "every task of tenant %s claimed once", own.label)
		for _, ev := range claims {
			require.True(t, own.ids[ev.WorkerID], "tenant %s's task claimed by runner %s", own.label, ev.WorkerID)
		}
		peek, err := own.runners[0].Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{"shared"}, Now: time.Now().UTC()})
		require.NoError(t, err)
		require.False(t, peek.Claimable, "tenant %s's outbox is empty", own.label)
	}
	checkSide(a, b, execsA, queued+load)
	checkSide(b, a, execsB, 2*load)
}

// Two PostgreSQL tenants, each connected as its own role, run a workflow
// of the same name side by side in one process.
func TestTenantIsolationPostgres(t *testing.T) {
	t.Parallel()
	a, b := newTenant(t), newTenant(t)
	testIsolation(t, a.URL, b.URL, 100, 200)

	infos, err := ListTenants(testContext(t), testdb.PostgresURL())
	require.NoError(t, err)
	found := 0
	for _, info := range infos {
		switch info.Schema {
		case a.Schema:
			require.EqualValues(t, 300, info.Runs)
			require.EqualValues(t, 600, info.Tasks)
		case b.Schema:
			require.EqualValues(t, 400, info.Runs)
			require.EqualValues(t, 800, info.Tasks)
		default:
			continue
		}
		found++
		require.Zero(t, info.Outbox)
		require.Empty(t, info.Problem)
		_, latest := migrationVersions(t, a.URL)
		require.Equal(t, latest, info.SchemaVersion)
	}
	require.Equal(t, 2, found)
}

// On SQLite a tenant is a file: the same test with one file per tenant.
func TestTenantIsolationSQLite(t *testing.T) {
	t.Parallel()
	// Smaller than on PostgreSQL: the pure-Go SQLite is slow under -race.
	testIsolation(t, testdb.SQLiteURL(t), testdb.SQLiteURL(t), 50, 150)
}

func migrationVersions(t *testing.T, url string) (current, latest int) {
	t.Helper()
	drv, err := openDriver(testContext(t), url, "", false)
	require.NoError(t, err)
	defer drv.Close()
	current, latest, err = drv.MigrationVersion(testContext(t))
	require.NoError(t, err)
	return current, latest
}

// The server, not Cloacina, keeps tenants apart: connected as tenant A's
// role, B's tables and the tenant registry are out of reach.
func TestTenantPermissions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, b := newTenant(t), newTenant(t)
	// Give B a run, so there is something to steal.
	wf, err := NewWorkflow("wf", Task{Name: "t", Run: ok})
	require.NoError(t, err)
	rb := startRunner(t, b.URL, &Config{Workflows: []*Workflow{wf}})
	_, err = rb.Execute(ctx, "wf", nil)
	require.NoError(t, err)

	conn := tenantConn(t, a)
	var user string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_user").Scan(&user))
	require.Equal(t, a.Role, user)

	bq := pgx.Identifier{b.Schema}.Sanitize()
	for _, table := range []string{"pipeline_executions", "task_executions", "task_outbox", "execution_events", "cloacina_runners"} {
		_, err := conn.Exec(ctx, "SELECT count(*) FROM "+bq+"."+table)
		requirePermissionDenied(t, err, "read "+table)
	}
	_, err = conn.Exec(ctx, "INSERT INTO "+bq+".pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at) VALUES ($1, 'wf', 'v', 'pending', '{}', now(), now())", uuid.New())
	requirePermissionDenied(t, err, "insert into B's runs")
	_, err = conn.Exec(ctx, "DELETE FROM "+bq+".task_outbox")
	requirePermissionDenied(t, err, "delete B's outbox")
	_, err = conn.Exec(ctx, "CREATE TABLE "+bq+".stolen (x int)")
	requirePermissionDenied(t, err, "create in B's schema")
	_, err = conn.Exec(ctx, "SELECT * FROM cloacina_admin.tenants")
	requirePermissionDenied(t, err, "read the tenant registry")
	_, err = conn.Exec(ctx, "CREATE TABLE public.cloacina_stolen (x int)")
	requirePermissionDenied(t, err, "create in public")
	_, err = conn.Exec(ctx, "DROP SCHEMA "+bq+" CASCADE")
	requirePermissionDenied(t, err, "drop B's schema")

	// A's own tables are A's.
	var runs int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{a.Schema}.Sanitize()+".pipeline_executions").Scan(&runs))
	require.Zero(t, runs)

	// The catalog agrees: each role owns its schema and every table in it,
	// nobody else holds a privilege there, and the roles are plain.
	admin := adminConn(t)
	for _, tn := range []*Tenant{a, b} {
		var owner string
		var grantees []string
		require.NoError(t, admin.QueryRow(ctx, `SELECT pg_get_userbyid(n.nspowner),
				ARRAY(SELECT DISTINCT COALESCE(pg_get_userbyid(NULLIF(acl.grantee, 0)), 'PUBLIC')
					FROM aclexplode(n.nspacl) acl WHERE acl.grantee <> n.nspowner)
			FROM pg_namespace n WHERE n.nspname = $1`, tn.Schema).Scan(&owner, &grantees))
		require.Equal(t, tn.Role, owner)
		require.Empty(t, grantees, "no one but the owner holds a privilege on schema %s", tn.Schema)
		var foreign, shared int
		require.NoError(t, admin.QueryRow(ctx, `SELECT
				count(*) FILTER (WHERE c.relowner <> n.nspowner),
				count(*) FILTER (WHERE EXISTS (SELECT 1 FROM aclexplode(c.relacl) acl WHERE acl.grantee <> c.relowner))
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1`, tn.Schema).Scan(&foreign, &shared))
		require.Zero(t, foreign, "every relation in %s belongs to its role", tn.Schema)
		require.Zero(t, shared, "no relation in %s is granted to anyone else", tn.Schema)
		var super, createDB, createRole, login bool
		require.NoError(t, admin.QueryRow(ctx, "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1", tn.Role).
			Scan(&super, &createDB, &createRole, &login))
		require.Equal(t, []bool{false, false, false, true}, []bool{super, createDB, createRole, login})
	}
	var crossUsage bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT has_schema_privilege($1, $2, 'USAGE')", b.Role, a.Schema).Scan(&crossUsage))
	require.False(t, crossUsage)
}

// A runner that cannot use its schema refuses to open, and leaves nothing
// behind anywhere else.
func TestTenantFailClosed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, b := newTenant(t), newTenant(t)
	admin := adminConn(t)
	// ownedOutside counts relations and schemas A's role owns outside its
	// own schema: there must never be any.
	ownedOutside := func() int {
		var n int
		require.NoError(t, admin.QueryRow(ctx, `SELECT
				(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
					WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $1) AND n.nspname NOT IN ($2, 'pg_toast'))
				+ (SELECT count(*) FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1) AND nspname <> $2)`,
			a.Role, a.Schema).Scan(&n))
		return n
	}
	wf, err := NewWorkflow("wf", Task{Name: "t", Run: ok})
	require.NoError(t, err)
	open := func(url string, cfg *Config) error {
		if cfg == nil {
			cfg = &Config{}
		}
		cfg.Workflows, cfg.Logger = []*Workflow{wf}, quietLogger()
		r, err := Open(ctx, url, cfg)
		if err == nil {
			r.Close()
		}
		return err
	}

	t.Run("AnotherTenantsSchema", func(t *testing.T) {
		err := open(withSchema(t, a.URL, b.Schema), nil)
		require.ErrorIs(t, err, ErrSchemaAccess)
		require.ErrorContains(t, err, "no USAGE privilege on schema")
		err = open(withSchema(t, a.URL, b.Schema), &Config{SkipMigrations: true})
		require.ErrorIs(t, err, ErrSchemaAccess)
		_, err = Migrate(ctx, withSchema(t, a.URL, b.Schema), "")
		require.ErrorIs(t, err, ErrSchemaAccess)
	})
	t.Run("NoSchemaMeansPublicWhichIsClosed", func(t *testing.T) {
		err := open(withSchema(t, a.URL, ""), nil)
		require.ErrorIs(t, err, ErrSchemaAccess)
		require.ErrorContains(t, err, `may not create tables in schema "public", the default used when no schema is selected`)
	})
	t.Run("MissingSchema", func(t *testing.T) {
		missing := testdb.NewSchema(t)
		err := open(withSchema(t, a.URL, missing), nil)
		require.ErrorIs(t, err, ErrSchemaAccess)
		require.ErrorContains(t, err, "does not exist")
		var exists bool
		require.NoError(t, admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", missing).Scan(&exists))
		require.False(t, exists)
	})
	t.Run("ApplicationPool", func(t *testing.T) {
		u, err := ParseDatabaseURL(a.URL)
		require.NoError(t, err)
		pool, err := pgxpool.New(ctx, u.DSN)
		require.NoError(t, err)
		defer pool.Close()
		_, err = OpenPool(ctx, pool, &Config{Schema: b.Schema, Logger: quietLogger()})
		require.ErrorIs(t, err, ErrSchemaAccess)
	})
	t.Run("SearchPathWithoutSchema", func(t *testing.T) {
		u, err := ParseDatabaseURL(a.URL)
		require.NoError(t, err)
		err = open(u.DSN+"&search_path="+a.Schema, nil)
		require.ErrorIs(t, err, ErrInvalidURL)
		require.ErrorContains(t, err, "schema=NAME")
		err = open(u.DSN+"&options=-c%20search_path%3D"+a.Schema, nil)
		require.ErrorIs(t, err, ErrInvalidURL)
	})
	t.Run("ConflictingSchemas", func(t *testing.T) {
		err := open(a.URL, &Config{Schema: b.Schema})
		require.ErrorIs(t, err, ErrInvalidURL)
		require.ErrorContains(t, err, "disagree")
	})
	t.Run("TableNotWritable", func(t *testing.T) {
		c := newTenant(t)
		_, err := admin.Exec(ctx, "REVOKE INSERT ON "+pgx.Identifier{c.Schema, "task_outbox"}.Sanitize()+" FROM "+pgx.Identifier{c.Role}.Sanitize())
		require.NoError(t, err)
		err = open(c.URL, nil)
		require.ErrorIs(t, err, ErrSchemaAccess)
		require.ErrorContains(t, err, "task_outbox")
		err = open(c.URL, &Config{SkipMigrations: true})
		require.ErrorIs(t, err, ErrSchemaAccess)
	})
	require.Zero(t, ownedOutside(), "a refused open left nothing behind")

	// The tenant's own URL still works.
	r := startRunner(t, a.URL, &Config{Workflows: []*Workflow{wf}})
	res, err := r.Execute(ctx, "wf", nil)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	require.Zero(t, ownedOutside())
}

// Invalid names are refused before any SQL runs: the administrator URL
// points at a port nothing listens on, so a connection attempt would show
// as a connection error, and nothing is created on the real server.
func TestTenantBadInput(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	const nowhere = "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=1"
	admin := adminConn(t)
	requireAbsent := func(name string) {
		t.Helper()
		var schemas, roles int
		require.NoError(t, admin.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1), (SELECT count(*) FROM pg_roles WHERE rolname = $1)", name).
			Scan(&schemas, &roles))
		require.Zero(t, schemas+roles, "nothing named %q was created", name)
	}
	badNames := []string{"", "tenant-1", "tenant 1", "a;drop schema public", `a";drop schema public;--`, "1tenant", "ténant",
		strings.Repeat("t", 64), "public", "PUBLIC", "pg_tenant", "information_schema", "cloacina_admin"}
	for _, name := range badNames {
		_, err := CreateTenant(ctx, nowhere, name, nil)
		require.ErrorContains(t, err, "invalid tenant name", "%q", name)
		_, err = CreateTenant(ctx, testdb.PostgresURL(), name, nil)
		require.ErrorContains(t, err, "invalid tenant name", "%q", name)
		err = DropTenant(ctx, nowhere, name)
		require.ErrorContains(t, err, "invalid tenant name", "%q", name)
		if !slices.Contains([]string{"public", "PUBLIC", "information_schema", "cloacina_admin"}, name) {
			requireAbsent(name)
		}
	}
	good := testdb.NewTenantName(t)
	for _, role := range []string{"pg_signal", "public", "none", "current_user", "role-1", "role;x", strings.Repeat("r", 64)} {
		_, err := CreateTenant(ctx, nowhere, good, &TenantOpts{Role: role})
		require.ErrorContains(t, err, "invalid role name", "%q", role)
	}
	for _, pw := range []string{"new\nline", "nul\x00", "pässword", strings.Repeat("p", 1025)} {
		_, err := CreateTenant(ctx, nowhere, good, &TenantOpts{Password: pw})
		require.ErrorContains(t, err, "invalid password", "%q", pw)
	}
	requireAbsent(good)

	_, err := CreateTenant(ctx, testdb.SQLiteURL(t), good, nil)
	require.ErrorIs(t, err, ErrInvalidURL)
	require.ErrorContains(t, err, "database file of its own")
	_, err = ListTenants(ctx, testdb.SQLiteURL(t))
	require.ErrorIs(t, err, ErrInvalidURL)
	_, err = Open(ctx, testdb.SQLiteURL(t), &Config{Schema: good})
	require.ErrorIs(t, err, ErrInvalidURL)
	require.ErrorContains(t, err, "SQLite has no schemas")

	err = DropTenant(ctx, testdb.PostgresURL(), good)
	require.ErrorIs(t, err, ErrTenantNotFound)
	// A schema Cloacina did not register is not a tenant, and is not dropped.
	plain := testdb.NewSchema(t)
	_, err = Migrate(ctx, testdb.WithSchema(testdb.PostgresURL(), plain), "")
	require.NoError(t, err)
	require.ErrorIs(t, DropTenant(ctx, testdb.PostgresURL(), plain), ErrTenantNotFound)
	var exists bool
	require.NoError(t, admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", plain).Scan(&exists))
	require.True(t, exists)
}

// CreateTenant refuses to take over an existing schema or role, and
// leaves nothing half-made when it refuses.
func TestTenantCreateConflicts(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newTenant(t)
	_, err := CreateTenant(ctx, testdb.PostgresURL(), a.Schema, nil)
	require.ErrorIs(t, err, ErrTenantExists)

	// A new schema whose role name is taken: neither is created.
	other := testdb.NewTenantName(t)
	_, err = CreateTenant(ctx, testdb.PostgresURL(), other, &TenantOpts{Role: a.Role})
	require.ErrorIs(t, err, ErrTenantExists)
	require.ErrorContains(t, err, a.Role)
	var exists bool
	require.NoError(t, adminConn(t).QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", other).Scan(&exists))
	require.False(t, exists)

	// An existing schema that is not a tenant.
	plain := testdb.NewSchema(t)
	_, err = Migrate(ctx, testdb.WithSchema(testdb.PostgresURL(), plain), "")
	require.NoError(t, err)
	_, err = CreateTenant(ctx, testdb.PostgresURL(), plain, &TenantOpts{Role: other})
	require.ErrorIs(t, err, ErrTenantExists)
	var roles int
	require.NoError(t, adminConn(t).QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname = $1", other).Scan(&roles))
	require.Zero(t, roles)
}

// The tenant URL keeps the administrator URL's host, port, database and
// parameters, escapes the password, and a given password and role are
// used as given.
func TestTenantURLAndOpts(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	name := testdb.NewTenantName(t)
	role := name + "_r"
	t.Cleanup(func() { testdb.DropTenantLeftovers(t, name, role) })
	password := `p@ss:w/rd?&'"\ 1`
	admin := testdb.PostgresURL() + "&application_name=cloacina_admin_test"
	tn, err := CreateTenant(ctx, admin, name, &TenantOpts{Role: role, Password: password})
	require.NoError(t, err)
	require.Equal(t, &Tenant{Schema: name, Role: role, Password: password, URL: tn.URL}, tn)

	u, err := ParseDatabaseURL(tn.URL)
	require.NoError(t, err)
	require.Equal(t, name, u.Schema)
	cfg, err := pgx.ParseConfig(u.DSN)
	require.NoError(t, err)
	adminCfg, err := pgx.ParseConfig(testdb.PostgresURL())
	require.NoError(t, err)
	require.Equal(t, role, cfg.User)
	require.Equal(t, password, cfg.Password)
	require.Equal(t, adminCfg.Host, cfg.Host)
	require.Equal(t, adminCfg.Port, cfg.Port)
	require.Equal(t, adminCfg.Database, cfg.Database)
	require.Equal(t, "cloacina_admin_test", cfg.RuntimeParams["application_name"])

	require.NoError(t, DropTenant(ctx, testdb.PostgresURL(), name))
	var left int
	require.NoError(t, adminConn(t).QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1)
		+ (SELECT count(*) FROM pg_roles WHERE rolname = $2)`, name, role).Scan(&left))
	require.Zero(t, left, "drop removed the schema and the role")
	infos, err := ListTenants(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	for _, info := range infos {
		require.NotEqual(t, name, info.Schema)
	}
	require.ErrorIs(t, DropTenant(ctx, testdb.PostgresURL(), name), ErrTenantNotFound)
}

// ListTenants reports a tenant broken outside Cloacina instead of failing.
func TestTenantListProblems(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := newTenant(t)
	_, err := adminConn(t).Exec(ctx, "DROP TABLE "+pgx.Identifier{a.Schema, "execution_events"}.Sanitize())
	require.NoError(t, err)
	infos, err := ListTenants(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	var info *TenantInfo
	for i := range infos {
		if infos[i].Schema == a.Schema {
			info = &infos[i]
		}
	}
	require.NotNil(t, info)
	require.Contains(t, info.Problem, "execution_events missing")
	require.Equal(t, a.Role, info.Role)
	require.NotZero(t, info.SchemaVersion)
	require.False(t, info.CreatedAt.IsZero())
	require.NoError(t, DropTenant(ctx, testdb.PostgresURL(), a.Schema))
}

// A non-superuser administrator (CREATEROLE, CREATE on the database, and
// the registry shared with it) can create, use and drop tenants.
func TestTenantNonSuperuserAdmin(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	newTenant(t)                         // makes sure the registry exists, made by the superuser
	adminRole := testdb.NewTenantName(t) // a fresh name, removed at the end
	q := pgx.Identifier{adminRole}.Sanitize()
	admin := adminConn(t)
	require.NoError(t, pgx.BeginFunc(ctx, admin, func(tx pgx.Tx) error {
		if err := testdb.LockTenantRegistry(ctx, tx); err != nil {
			return err
		}
		for _, s := range []string{
			"CREATE ROLE " + q + " LOGIN CREATEROLE",
			"GRANT CREATE ON DATABASE " + pgx.Identifier{mustDatabase(t)}.Sanitize() + " TO " + q,
			"GRANT USAGE ON SCHEMA cloacina_admin TO " + q,
			"GRANT SELECT, INSERT, UPDATE, DELETE ON cloacina_admin.tenants TO " + q,
		} {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	}))
	cfg, err := pgx.ParseConfig(testdb.PostgresURL())
	require.NoError(t, err)
	adminURL := strings.Replace(testdb.PostgresURL(), cfg.User+"@", adminRole+"@", 1)

	name := testdb.NewTenantName(t)
	tn, err := CreateTenant(ctx, adminURL, name, nil)
	require.NoError(t, err)
	wf, err := NewWorkflow("wf", Task{Name: "t", Run: ok})
	require.NoError(t, err)
	r := startRunner(t, tn.URL, &Config{Workflows: []*Workflow{wf}})
	_, err = r.Execute(ctx, "wf", nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	infos, err := ListTenants(ctx, adminURL)
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(infos, func(i TenantInfo) bool { return i.Schema == name && i.Runs == 1 }))
	require.NoError(t, DropTenant(ctx, adminURL, name))
	var left int
	require.NoError(t, admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1)
		+ (SELECT count(*) FROM pg_roles WHERE rolname = $1)`, name).Scan(&left))
	require.Zero(t, left)
}

func mustDatabase(t *testing.T) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(testdb.PostgresURL())
	require.NoError(t, err)
	return cfg.Database
}

// A cancel wake-up is checked against the database before a runner
// cancels anything: a role that may only read the schema can read the
// channel's name and send on it, and its forged cancel:<run> used to
// cancel that run's running tasks (which then failed the run). A genuine
// cancel, sent after it by another runner, is a sentinel: once it has
// arrived, the forged one was handled before it.
func TestForgedCancelWakeUpCancelsNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	schema := testdb.NewSchema(t)
	url := testdb.WithSchema(testdb.PostgresURL(), schema)
	started := make(chan string, 2)
	ended := make(chan string, 2)
	wf := MustWorkflow("w", Task{Name: "hold", Run: func(ctx context.Context, _ *Context) error {
		info, _ := TaskInfoFrom(ctx)
		started <- info.RunID.String()
		<-ctx.Done()
		ended <- info.RunID.String()
		return ctx.Err()
	}})
	// An hour-long poll: only wake-ups reach this runner's watch for
	// cancelled runs.
	r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
	victim, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	sentinel, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	waitFor(t, started, "a task to start")
	waitFor(t, started, "the other task to start")

	_, roleURL := testdb.SelectOnlyRoleURL(t, testdb.PostgresURL(), schema)
	spy, err := pgx.Connect(ctx, roleURL)
	require.NoError(t, err)
	defer spy.Close(context.Background())
	var channel string
	require.NoError(t, spy.QueryRow(ctx, "SELECT name FROM "+pgx.Identifier{schema, "cloacina_channel"}.Sanitize()).Scan(&channel))
	_, err = spy.Exec(ctx, "SELECT pg_notify($1, $2)", channel, "cancel:"+victim.ID().String())
	require.NoError(t, err)

	other := openRunner(t, url, nil)
	require.NoError(t, other.Cancel(ctx, sentinel.ID()))
	require.Equal(t, sentinel.ID().String(), waitFor(t, ended, "the genuine cancel to reach the task"), "the forged cancel ended no task")
	status, err := victim.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineRunning, status)
	require.NoError(t, r.Cancel(ctx, victim.ID()))
	require.Equal(t, victim.ID().String(), waitFor(t, ended, "the victim's task to end once really cancelled"))
}

// A started runner whose tenant loses its tables (DropTenant while the
// runner is up) or its access to them (USAGE revoked) fails ExecuteAsync
// with the database's error. It used to block until ctx ended: the start
// transaction had claimed the run's first task for this runner (hand-off),
// its commit failed, and the check of that claim retried the same
// permanent error until ctx was done — forever with context.Background().
func TestExecuteAfterTenantLostReturnsTheError(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"drop tenant", "revoke usage"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			tn := newTenant(t)
			wf := MustWorkflow("wf", Task{Name: "t", Run: ok})
			r := startRunner(t, tn.URL, &Config{Workflows: []*Workflow{wf}})
			_, err := r.Execute(ctx, "wf", nil)
			require.NoError(t, err)
			switch how {
			case "drop tenant":
				require.NoError(t, DropTenant(ctx, testdb.PostgresURL(), tn.Schema))
			case "revoke usage":
				schema := pgx.Identifier{tn.Schema}.Sanitize()
				_, err := adminConn(t).Exec(ctx, "REVOKE USAGE ON SCHEMA "+schema+" FROM "+pgx.Identifier{tn.Role}.Sanitize())
				require.NoError(t, err)
				// The schema's owner keeps its rights: take ownership away too.
				_, err = adminConn(t).Exec(ctx, "ALTER SCHEMA "+schema+" OWNER TO CURRENT_USER")
				require.NoError(t, err)
			}
			ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err = r.ExecuteAsync(ectx, "wf", nil)
			require.Error(t, err)
			require.NotErrorIs(t, err, context.DeadlineExceeded, "ExecuteAsync waited for ctx instead of returning the database's error")
		})
	}
}
