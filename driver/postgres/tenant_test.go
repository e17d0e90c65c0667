package postgres_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/drivertest"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// newTenant creates a tenant and opens a driver on it connected as the
// tenant's own role.
func newTenant(t *testing.T, admin *postgres.Admin) *postgres.Driver {
	t.Helper()
	name := testdb.NewTenantName(t)
	require.NoError(t, admin.TenantCreate(t.Context(), &postgres.TenantCreateParams{Schema: name, Role: name, Password: "unused-under-trust"}))
	u, err := url.Parse(testdb.PostgresURL())
	require.NoError(t, err)
	u.User = url.UserPassword(name, "unused-under-trust")
	drv, err := postgres.Open(t.Context(), u.String(), &postgres.Opts{Schema: name})
	require.NoError(t, err)
	t.Cleanup(func() { drv.Close() })
	require.NoError(t, drv.Migrate(t.Context()), "the tenant role can open and migrate its own schema")
	return drv
}

func openAdmin(t *testing.T) *postgres.Admin {
	t.Helper()
	admin, err := postgres.OpenAdmin(t.Context(), testdb.PostgresURL())
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	return admin
}

// One tenant's wake-ups never reach another tenant's listeners: each
// listens on its schema's channel. Checked with a sentinel: a payload
// that leaked would arrive before the sentinel sent after it.
func TestTenantWakeUpsStayInTenant(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	admin := openAdmin(t)
	a, b := newTenant(t, admin), newTenant(t, admin)
	subA, err := a.Listen(ctx)
	require.NoError(t, err)
	defer subA.Close()
	subB, err := b.Listen(ctx)
	require.NoError(t, err)
	defer subB.Close()

	notify := func(d *postgres.Driver, payloads ...string) {
		tx, err := d.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(context.Background())
		require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Notify: payloads}))
		require.NoError(t, tx.Commit(ctx))
	}
	next := func(sub driver.Subscription) string {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		p, err := sub.Wait(wctx)
		require.NoError(t, err)
		return p
	}
	for range 20 {
		notify(a, "work:shared")
	}
	notify(b, "sentinel")
	require.Equal(t, "sentinel", next(subB), "B heard none of A's 20 wake-ups")
	for range 20 {
		require.Equal(t, "work:shared", next(subA))
	}
}

// Behind a transaction-pooling pooler the documented URL setting is
// default_query_exec_mode=exec: the whole conformance suite passes in
// that mode, so no statement of the backend needs session state.
func TestConformanceExecMode(t *testing.T) {
	execMode := []string{"default_query_exec_mode", "exec"}
	drivertest.Run(t, func(t *testing.T) driver.Driver { return open(t, testdb.NewSchema(t), execMode...) }, conformanceOptions(execMode...))
}

func TestValidateTenantNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"tenant_1", "_x", "Acme", strings.Repeat("t", 63)} {
		require.NoError(t, postgres.ValidateTenant(name), name)
		require.NoError(t, postgres.ValidateRole(name), name)
	}
	for _, name := range []string{"", "tenant-1", "tenant 1", "a;drop schema public", `a"b`, "1a", "ténant",
		strings.Repeat("t", 64), "pg_x", "PG_X"} {
		require.ErrorContains(t, postgres.ValidateTenant(name), "invalid tenant name", name)
		require.ErrorContains(t, postgres.ValidateRole(name), "invalid role name", name)
	}
	for _, name := range []string{"public", "Public", "information_schema", "cloacina_admin"} {
		require.ErrorContains(t, postgres.ValidateTenant(name), "invalid tenant name", name)
	}
	for _, name := range []string{"public", "none", "current_user", "current_role", "session_user"} {
		require.ErrorContains(t, postgres.ValidateRole(name), "reserved", name)
	}
	require.NoError(t, postgres.ValidatePassword(`a b'c"d\e`))
	for _, pw := range []string{"", "tab\there", "é", strings.Repeat("p", 1025)} {
		require.Error(t, postgres.ValidatePassword(pw), "%q", pw)
	}
}

// A pool the application built for a transaction pooler must register
// the backend's types; one that did not is told so when the backend
// opens, not at its first write.
func TestApplicationPoolInExecMode(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg, err := pgxpool.ParseConfig(testdb.PostgresURL() + "&default_query_exec_mode=exec&pool_max_conns=2")
	require.NoError(t, err)
	bare, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer bare.Close()
	drv, err := postgres.New(bare, &postgres.Opts{Schema: testdb.NewSchema(t)})
	require.NoError(t, err)
	require.ErrorContains(t, drv.Migrate(ctx), "postgres.RegisterTypes")
	_, _, err = drv.MigrationVersion(ctx)
	require.ErrorContains(t, err, "postgres.RegisterTypes")

	cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
		postgres.RegisterTypes(c.TypeMap())
		return nil
	}
	registered, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer registered.Close()
	drv, err = postgres.New(registered, &postgres.Opts{Schema: drv.Schema()})
	require.NoError(t, err)
	require.NoError(t, drv.Migrate(ctx))
}

// NOTIFY channels belong to the whole database and need no privilege, so
// a tenant's channel name is a secret of its schema: another tenant's role
// cannot read it, hears nothing on a name guessed from the schema, and
// cannot reach the tenant's runners by sending on that name. (Checked with
// sentinels sent after: a leaked or forged payload would arrive first.)
func TestTenantChannelIsPrivate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	admin := openAdmin(t)
	a, b := newTenant(t, admin), newTenant(t, admin)
	u, err := url.Parse(testdb.PostgresURL())
	require.NoError(t, err)
	u.User = url.UserPassword(b.Schema(), "unused-under-trust")
	spy, err := pgx.Connect(ctx, u.String())
	require.NoError(t, err)
	defer spy.Close(context.Background())

	var name string
	err = spy.QueryRow(ctx, "SELECT name FROM "+pgx.Identifier{a.Schema(), "cloacina_channel"}.Sanitize()).Scan(&name)
	require.ErrorContains(t, err, "42501", "B's role may not read A's channel name")

	guessed := pgx.Identifier{"cloacina_" + a.Schema()}.Sanitize()
	_, err = spy.Exec(ctx, "LISTEN "+guessed)
	require.NoError(t, err)
	_, err = spy.Exec(ctx, "LISTEN spy_sentinel")
	require.NoError(t, err)
	tx, err := a.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Notify: []string{"work:payroll", "cancel:0190b6a2-0000-7000-8000-000000000001"}}))
	require.NoError(t, tx.Commit(ctx))
	_, err = a.Pool().Exec(ctx, "NOTIFY spy_sentinel")
	require.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := spy.WaitForNotification(wctx)
	require.NoError(t, err)
	require.Equal(t, "spy_sentinel", n.Channel, "B's role heard %q on %s", n.Payload, n.Channel)

	subA, err := a.Listen(ctx)
	require.NoError(t, err)
	defer subA.Close()
	_, err = spy.Exec(ctx, "SELECT pg_notify($1, 'cancel:forged')", "cloacina_"+a.Schema())
	require.NoError(t, err)
	tx, err = a.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Notify: []string{"sentinel"}}))
	require.NoError(t, tx.Commit(ctx))
	p, err := subA.Wait(wctx)
	require.NoError(t, err)
	require.Equal(t, "sentinel", p, "A's runners heard B's forged payload")
}
