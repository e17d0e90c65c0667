package sqlite

import (
	"context"
	"embed"
	"fmt"
	"time"

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

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS cloacina_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)`

// Migrate applies pending migrations in one IMMEDIATE transaction, so two
// processes migrating at once apply each migration once. A database
// already up to date (or migrated by a newer release, which is refused
// with [driver.ErrSchemaTooNew]) is only read, without the write lock, so
// opening it does not wait behind another process's long transaction. A
// Driver opened with [OpenReadOnly] returns [driver.ErrReadOnly].
func (d *Driver) Migrate(ctx context.Context) error {
	if d.ro != nil {
		return readOnlyError("migrate")
	}
	return d.migrateTo(ctx, len(migrations))
}

// migrateTo is Migrate up to version upTo (tests stop short of the newest
// to check that a migration keeps existing data).
func (d *Driver) migrateTo(ctx context.Context, upTo int) error {
	// A database already there takes no write lock, which another process
	// may hold for longer than the busy timeout (an application's long
	// transaction): a read tells. Anything else is decided under the lock.
	if current, latest, err := d.MigrationVersion(ctx); err == nil {
		if current > latest {
			return fmt.Errorf("sqlite: %w: database is at version %d, this code knows up to %d: upgrade cloacina", driver.ErrSchemaTooNew, current, latest)
		}
		if current >= upTo {
			return nil
		}
	}
	tx, err := d.beginWrite(ctx)
	if err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	defer d.file.unlock()
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, createMigrationsTable); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", mapError(err))
	}
	var current int
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM cloacina_migrations").Scan(&current); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", mapError(err))
	}
	if latest := len(migrations); current > latest {
		return fmt.Errorf("sqlite: %w: database is at version %d, this code knows up to %d: upgrade cloacina", driver.ErrSchemaTooNew, current, latest)
	}
	for _, m := range migrations[min(current, upTo):upTo] {
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("sqlite: apply migration %d (%s): %w", m.Version, m.Name, mapError(err))
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO cloacina_migrations (version, name, applied_at) VALUES (?, ?, ?)",
			m.Version, m.Name, formatTime(time.Now())); err != nil {
			return fmt.Errorf("sqlite: record migration %d: %w", m.Version, mapError(err))
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: migrate: commit: %w", mapError(err))
	}
	return nil
}

// MigrationVersion reports the applied and the newest known schema version.
func (d *Driver) MigrationVersion(ctx context.Context) (current, latest int, err error) {
	var n int
	err = d.reads().QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'cloacina_migrations'").Scan(&n)
	if err != nil {
		return 0, 0, fmt.Errorf("sqlite: read schema version: %w", mapError(err))
	}
	if n > 0 {
		if err := d.reads().QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM cloacina_migrations").Scan(&current); err != nil {
			return 0, 0, fmt.Errorf("sqlite: read schema version: %w", mapError(err))
		}
	}
	return current, len(migrations), nil
}
