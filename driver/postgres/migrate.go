package postgres

import (
	"context"
	"embed"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/cloacina-go/cloacina/driver"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

var migrations = mustLoadMigrations()

func mustLoadMigrations() []driver.Migration {
	m, err := driver.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		panic(err) // the embedded files are fixed at build time; tests catch this
	}
	return m
}

// Migrate creates the schema if it is missing and applies pending
// migrations in one transaction, holding an advisory lock keyed on the
// schema so concurrent migrators apply each migration once. A role that
// may not create tables in the schema can migrate it only when nothing is
// pending (and it may read and write every table). A schema a newer
// release migrated fails with [driver.ErrSchemaTooNew], whoever migrates.
// A backend opened with Opts.ReadOnly returns [driver.ErrReadOnly].
func (d *Driver) Migrate(ctx context.Context) error {
	if d.readOnly {
		return readOnlyError("migrate", d.schema)
	}
	return d.migrateTo(ctx, len(migrations))
}

// migrateTo is Migrate up to version upTo (tests stop short of the newest
// to check that a migration keeps existing data).
func (d *Driver) migrateTo(ctx context.Context, upTo int) error {
	if err := d.checkMigratable(ctx); err != nil {
		// A role that may use the tables but not create any (an
		// application role of a schema its owner migrates) has nothing
		// to do when the schema is up to date; one a newer release
		// migrated is too new for it, as for its owner.
		current, _, verr := d.MigrationVersion(ctx)
		switch {
		case verr == nil && current > len(migrations):
			return d.tooNew(current)
		case verr == nil && current >= upTo && current == len(migrations):
			return nil
		}
		return err
	}
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", mapError(err))
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "cloacina_migrate:"+d.schema); err != nil {
		return fmt.Errorf("postgres: migrate: lock: %w", mapError(err))
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", d.schema).Scan(&exists); err != nil {
		return fmt.Errorf("postgres: migrate: %w", mapError(err))
	}
	quoted := pgx.Identifier{d.schema}.Sanitize()
	if !exists {
		// Only create when missing: CREATE SCHEMA IF NOT EXISTS still needs
		// the CREATE privilege on the database, which a tenant role lacks.
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+quoted); err != nil {
			return fmt.Errorf("postgres: create schema %s: %w", d.schema, mapError(err))
		}
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+quoted+`.cloacina_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("postgres: migrate schema %s: %w", d.schema, mapError(err))
	}
	var current int
	if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM "+quoted+".cloacina_migrations").Scan(&current); err != nil {
		return fmt.Errorf("postgres: migrate: %w", mapError(err))
	}
	if current > len(migrations) {
		return d.tooNew(current)
	}
	for _, m := range migrations[min(current, upTo):upTo] {
		if _, err := tx.Exec(ctx, strings.ReplaceAll(m.SQL, "{{schema}}", quoted)); err != nil {
			return fmt.Errorf("postgres: apply migration %d (%s) to schema %s: %w", m.Version, m.Name, d.schema, mapError(err))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+quoted+".cloacina_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
			return fmt.Errorf("postgres: record migration %d: %w", m.Version, mapError(err))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: migrate: commit: %w", mapError(err))
	}
	if !exists {
		d.created.Store(true)
	}
	if upTo < len(migrations) {
		return nil // a test's older schema: the tables of later versions are missing by design
	}
	return d.verifyTables(ctx, false)
}

// tooNew is the error of a schema at version current, which a newer
// release migrated.
func (d *Driver) tooNew(current int) error {
	return fmt.Errorf("postgres: %w: schema %s is at version %d, this code knows up to %d: upgrade cloacina",
		driver.ErrSchemaTooNew, d.schema, current, len(migrations))
}

// MigrationVersion reports the applied and the newest known schema version.
// At the newest version it checks that the connected role may read and
// write every table (only read, when opened with Opts.ReadOnly).
func (d *Driver) MigrationVersion(ctx context.Context) (current, latest int, err error) {
	if err := d.checkUsableNow(ctx); err != nil {
		return 0, 0, err
	}
	var table *string
	if err := d.pool.QueryRow(ctx, "SELECT to_regclass($1)::text", pgx.Identifier{d.schema, "cloacina_migrations"}.Sanitize()).Scan(&table); err != nil {
		return 0, 0, fmt.Errorf("postgres: read schema version: %w", mapError(err))
	}
	if table != nil {
		q := "SELECT COALESCE(MAX(version), 0) FROM " + pgx.Identifier{d.schema}.Sanitize() + ".cloacina_migrations"
		if err := d.pool.QueryRow(ctx, q).Scan(&current); err != nil {
			return 0, 0, fmt.Errorf("postgres: read schema version: %w", mapError(err))
		}
	}
	if current == len(migrations) {
		if err := d.verifyTables(ctx, d.readOnly); err != nil {
			return 0, 0, err
		}
	}
	return current, len(migrations), nil
}

// readOnlyError is the error of a write through a backend opened with
// Opts.ReadOnly.
func readOnlyError(op, schema string) error {
	return fmt.Errorf("postgres: %s schema %s: %w: it was opened with Opts.ReadOnly; open it without to write", op, schema, driver.ErrReadOnly)
}
