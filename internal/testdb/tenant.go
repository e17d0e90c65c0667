package testdb

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// NewTenantName returns a random name for a tenant (schema and role) that
// does not exist yet. When the test ends, whatever the code under test
// left behind under that name is removed: the schema, the role (roles are
// shared by the whole server, so a leak would outlive the database) and
// the tenant registry row. It fails the test when PostgreSQL is
// unreachable.
func NewTenantName(t testing.TB) string {
	t.Helper()
	name := randomName("tenant_")
	requirePostgres(t)
	mark(t)
	t.Cleanup(func() { DropTenantLeftovers(t, name, name) })
	return name
}

// DropTenantLeftovers removes a tenant's schema, role and registry row if
// they exist. It holds the registry's advisory lock, as tenant
// administration does: granting and revoking on the database updates one
// catalog row, and concurrent updates of it fail.
func DropTenantLeftovers(t testing.TB, schema, role string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, PostgresURL())
	if err != nil {
		t.Errorf("drop tenant %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := LockTenantRegistry(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			return err
		}
		var roleExists, registry bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), to_regclass('cloacina_admin.tenants') IS NOT NULL", role).
			Scan(&roleExists, &registry); err != nil {
			return err
		}
		if registry {
			if _, err := tx.Exec(ctx, "DELETE FROM cloacina_admin.tenants WHERE schema_name = $1", schema); err != nil {
				return err
			}
		}
		if roleExists {
			r := pgx.Identifier{role}.Sanitize()
			for _, s := range []string{"DROP OWNED BY " + r, "DROP ROLE " + r} {
				if _, err := tx.Exec(ctx, s); err != nil {
					return fmt.Errorf("%s: %w", s, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("drop tenant %s (role %s): %v", schema, role, err)
	}
}

// LockTenantRegistry takes, for the rest of tx, the advisory lock tenant
// administration holds; tests that grant or revoke on the database by
// hand take it too.
func LockTenantRegistry(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('cloacina_admin', 0))")
	return err
}

// mark records a PostgreSQL-backed test in the CI marker file.
func mark(t testing.TB) {
	path := os.Getenv(EnvMarker)
	if path == "" {
		return
	}
	markerMu.Lock()
	defer markerMu.Unlock()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, t.Name())
		f.Close()
	}
}

// SelectOnlyRoleURL creates a login role that may only read the tables of
// schema (USAGE on the schema, SELECT on its tables), dropped with its
// grants when the test ends, and returns its name and baseURL with that
// role as the user.
func SelectOnlyRoleURL(t testing.TB, baseURL, schema string) (role, roleURL string) {
	t.Helper()
	return newRoleURL(t, baseURL, schema, "GRANT SELECT ON ALL TABLES IN SCHEMA %s TO %s")
}

// ReadWriteRoleURL is SelectOnlyRoleURL for a role that may also insert,
// update and delete rows (and use the schema's sequences), but not create
// anything in the schema: an application role of a schema its owner
// migrates.
func ReadWriteRoleURL(t testing.TB, baseURL, schema string) (role, roleURL string) {
	t.Helper()
	return newRoleURL(t, baseURL, schema,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO %s",
		"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %s TO %s")
}

// newRoleURL creates a login role with USAGE on schema and the grants (each
// a format taking the quoted schema and role), dropped when the test ends.
func newRoleURL(t testing.TB, baseURL, schema string, grants ...string) (role, roleURL string) {
	t.Helper()
	role = NewTenantName(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, PostgresURL())
	if err != nil {
		t.Fatalf("testdb: connect: %v", err)
	}
	defer conn.Close(ctx)
	r, s := pgx.Identifier{role}.Sanitize(), pgx.Identifier{schema}.Sanitize()
	stmts := []string{"CREATE ROLE " + r + " LOGIN", "GRANT USAGE ON SCHEMA " + s + " TO " + r}
	for _, g := range grants {
		stmts = append(stmts, fmt.Sprintf(g, s, r))
	}
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("testdb: %s: %v", stmt, err)
		}
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("testdb: parse %q: %v", baseURL, err)
	}
	u.User = url.User(role)
	return role, u.String()
}
