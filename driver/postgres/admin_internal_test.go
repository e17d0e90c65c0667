package postgres

import (
	"context"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Tenant errors an administrator can fix say what to do.
func TestAdminErrorsNameTheFix(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	admin, err := OpenAdmin(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	t.Cleanup(admin.Close)

	t.Run("a tenant in use", func(t *testing.T) {
		name := testdb.NewTenantName(t)
		require.NoError(t, admin.TenantCreate(ctx, &TenantCreateParams{Schema: name, Role: name, Password: "unused-under-trust"}))
		busy, err := pgx.Connect(ctx, testdb.PostgresURL())
		require.NoError(t, err)
		defer busy.Close(context.WithoutCancel(ctx))
		tx, err := busy.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{name, "task_executions"}.Sanitize()+" IN ACCESS SHARE MODE")
		require.NoError(t, err)
		quick := *admin
		quick.dropLockTimeout = "100ms"
		err = quick.TenantDrop(ctx, name)
		require.ErrorContains(t, err, "the tenant's tables are in use: stop the tenant's runners and try again")
		require.NoError(t, tx.Rollback(ctx))
		require.NoError(t, admin.TenantDrop(ctx, name), "nothing was dropped; the drop works once the tables are free")
	})

	t.Run("an administrator without the privileges", func(t *testing.T) {
		role := testdb.NewTenantName(t) + "_adm"
		conn, err := pgx.Connect(ctx, testdb.PostgresURL())
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
		_, err = conn.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN CREATEROLE")
		require.NoError(t, err)
		t.Cleanup(func() {
			_, err := conn.Exec(context.WithoutCancel(ctx), "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
			require.NoError(t, err)
		})
		u, err := url.Parse(testdb.PostgresURL())
		require.NoError(t, err)
		u.User = url.User(role)
		weak, err := OpenAdmin(ctx, u.String())
		require.NoError(t, err)
		defer weak.Close()
		name := testdb.NewTenantName(t)
		err = weak.TenantCreate(ctx, &TenantCreateParams{Schema: name, Role: name, Password: "unused-under-trust"})
		require.ErrorContains(t, err, "permission denied")
		require.ErrorContains(t, err, "the administrator role needs CREATEROLE, CREATE on the database")
	})
}
