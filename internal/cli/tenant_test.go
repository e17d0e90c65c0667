package cli

import (
	"context"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

// tenantURL returns the database URL `tenant create` printed: its last line.
func tenantURL(t *testing.T, out string) string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	u := lines[len(lines)-1]
	require.True(t, strings.HasPrefix(u, "postgres://"), "create printed:\n%s", out)
	return u
}

// exists reports whether a schema and a role of that name exist.
func exists(t *testing.T, name string) (schema, role bool) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), testdb.PostgresURL())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	require.NoError(t, conn.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, name).Scan(&schema, &role))
	return schema, role
}

// The whole life of a tenant through the CLI: create it, run the demo as
// the tenant with the printed URL, list it, drop it.
func TestTenantLifecycle(t *testing.T) {
	t.Parallel()
	admin := testdb.PostgresURL()
	name := testdb.NewTenantName(t)

	out := ok(t, admin, "tenant", "create", name)
	require.Contains(t, out, "tenant "+name+" created")
	tenant := tenantURL(t, out)
	u, err := url.Parse(tenant)
	require.NoError(t, err)
	au, err := url.Parse(admin)
	require.NoError(t, err)
	require.Equal(t, name, u.User.Username())
	pw, _ := u.User.Password()
	require.Len(t, pw, 43, "a generated password")
	require.Equal(t, au.Host, u.Host, "the administrator URL's host and port")
	require.Equal(t, au.Path, u.Path, "the administrator URL's database")
	require.Equal(t, name, u.Query().Get("schema"))
	require.Equal(t, au.Query().Get("sslmode"), u.Query().Get("sslmode"), "the administrator URL's parameters")
	require.False(t, u.Query().Has("connect_timeout"), "only parameters the user wrote")

	// The tenant's own URL runs the demo in the tenant's schema, as its role.
	demo := ok(t, tenant, "demo")
	require.Contains(t, demo, "pipeline_completed")
	runs := ok(t, tenant, "runs", "list")
	_, rows := parseTable(t, runs)
	require.Len(t, rows, 1)

	out = ok(t, admin, "tenant", "list")
	header, rows := parseTable(t, out)
	require.Equal(t, row{"TENANT", "ROLE", "VERSION", "RUNS", "TASKS", "EVENTS", "QUEUED", "CREATED"}, header[:8])
	i := slices.IndexFunc(rows, func(r row) bool { return r[0] == name })
	require.GreaterOrEqual(t, i, 0, out)
	r := rows[i]
	require.Equal(t, name, r[1])
	require.Equal(t, strconv.Itoa(latestSchemaVersion(t)), r[2])
	require.Equal(t, "1", r[3], "one run")
	require.Equal(t, "4", r[4], "the demo's four tasks")
	require.Equal(t, "0", r[6], "nothing queued")

	// The same as JSON Lines: snake_case keys, UTC times.
	tenants := jsonLines(t, ok(t, admin, "tenant", "list", "--json"))
	i = slices.IndexFunc(tenants, func(m map[string]any) bool { return m["name"] == name })
	require.GreaterOrEqual(t, i, 0, tenants)
	j := tenants[i]
	require.Equal(t, name, j["role"])
	require.Equal(t, float64(latestSchemaVersion(t)), j["schema_version"])
	require.Equal(t, float64(1), j["runs"])
	require.Equal(t, float64(4), j["tasks"])
	require.Contains(t, j, "events")
	require.Equal(t, float64(0), j["queued"])
	require.Equal(t, "", j["problem"])
	created, err := time.Parse(time.RFC3339Nano, j["created_at"].(string))
	require.NoError(t, err)
	require.Equal(t, time.UTC, created.Location())
	require.Equal(t, r[7], formatTime(created), "the table's CREATED")

	// The tenant's role cannot use another schema: a one-line error at open.
	foreign := testdb.NewSchema(t)
	ok(t, testdb.WithSchema(admin, foreign), "migrate")
	res := cli(t, "--database-url", strings.Replace(tenant, "schema="+name, "schema="+foreign, 1), "runs", "list")
	requireOneLineError(t, res, ExitFailure, "cannot use database")
	res = cli(t, "--database-url", strings.Replace(tenant, "schema="+name, "schema=public", 1), "demo")
	requireOneLineError(t, res, ExitFailure, "select the tenant's schema with schema=NAME")

	// Without --yes nothing is dropped.
	res = cli(t, "--database-url", admin, "tenant", "drop", name)
	requireOneLineError(t, res, ExitUsage, "add --yes to confirm")
	schema, role := exists(t, name)
	require.True(t, schema && role)

	out = ok(t, admin, "tenant", "drop", name, "--yes")
	require.Contains(t, out, "tenant "+name+" dropped")
	schema, role = exists(t, name)
	require.False(t, schema || role, "schema and role are gone")
	res = cli(t, "--database-url", admin, "tenant", "drop", name, "--yes")
	requireOneLineError(t, res, ExitFailure, "no tenant")
	res = cli(t, "--database-url", tenant, "runs", "list")
	require.Equal(t, ExitFailure, res.code, "the dropped tenant's URL no longer works")
}

// A given role name and a password from the environment are used as given.
func TestTenantCreateRoleAndPassword(t *testing.T) {
	t.Parallel()
	name := testdb.NewTenantName(t)
	role := name + "_login"
	t.Cleanup(func() { testdb.DropTenantLeftovers(t, name, role) })
	res := cliEnv(t, map[string]string{EnvTenantPassword: "s3cret with space&?"},
		"--database-url", testdb.PostgresURL(), "tenant", "create", name, "--role", role)
	require.Equal(t, ExitOK, res.code, res.stderr)
	u, err := url.Parse(tenantURL(t, res.stdout))
	require.NoError(t, err)
	require.Equal(t, role, u.User.Username())
	pw, _ := u.User.Password()
	require.Equal(t, "s3cret with space&?", pw)
	ok(t, tenantURL(t, res.stdout), "migrate")
	ok(t, testdb.PostgresURL(), "tenant", "drop", name, "--yes")
	schema, roleLeft := exists(t, role)
	require.False(t, schema || roleLeft)
}

// Bad names and misplaced URLs are usage errors, reported before anything
// connects: the administrator URL points nowhere, so a connection attempt
// would show as a failure instead.
func TestTenantBadInput(t *testing.T) {
	t.Parallel()
	const nowhere = "postgres://postgres@127.0.0.1:1/test?sslmode=disable"
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"tenant", "create", "tenant-1"}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", "tenant 1"}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", "a;drop schema public"}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", strings.Repeat("t", 64)}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", "public"}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", "pg_catalog"}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", "information_schema"}, nil, "invalid tenant name"},
		{[]string{"tenant", "create", "ok_name", "--role", "pg_monitor"}, nil, "invalid role name"},
		{[]string{"tenant", "create", "ok_name", "--role", "bad-role"}, nil, "invalid role name"},
		{[]string{"tenant", "create", "ok_name"}, map[string]string{EnvTenantPassword: "tab\tin it"}, "invalid password"},
		{[]string{"tenant", "create"}, nil, "takes a tenant name"},
		{[]string{"tenant", "drop", "tenant-1", "--yes"}, nil, "invalid tenant name"},
		{[]string{"tenant", "drop", "ok_name"}, nil, "--yes"},
		{[]string{"tenant", "list", "extra"}, nil, "takes no arguments"},
		{[]string{"tenant"}, nil, "missing subcommand"},
		{[]string{"tenant", "craete", "x"}, nil, `did you mean "create"`},
	} {
		res := cliEnv(t, tc.env, append([]string{"--database-url", nowhere}, tc.args...)...)
		requireOneLineError(t, res, ExitUsage, tc.want)
	}
	for _, name := range []string{"tenant-1", "tenant 1", "a;drop schema public"} {
		schema, role := exists(t, name)
		require.False(t, schema || role, name)
	}

	sqlite := "sqlite://" + t.TempDir() + "/x.db"
	for _, args := range [][]string{{"tenant", "create", "acme"}, {"tenant", "list"}, {"tenant", "drop", "acme", "--yes"}} {
		res := cli(t, append([]string{"--database-url", sqlite}, args...)...)
		requireOneLineError(t, res, ExitUsage, "database file of its own")
	}
	res := cli(t, "--database-url", testdb.WithSchema(nowhere, "acme"), "tenant", "list")
	requireOneLineError(t, res, ExitUsage, "drop the schema parameter")

	res = cli(t, "--database-url", nowhere+"&connect_timeout=1", "tenant", "list")
	requireOneLineError(t, res, ExitFailure, "cannot connect to PostgreSQL")
}
