package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cloacina-go/cloacina/driver"
)

// location is where a session is connected: a server, by its system
// identifier (0 when the role may not read it), and a database.
type location struct {
	system   int64
	database string
}

// systemIdentifier is the SQL of the server's system identifier, which
// is drawn when the cluster is created and shared by its streaming
// replicas. pg_control_system is open to every role by default.
const systemIdentifier = "(SELECT system_identifier FROM pg_catalog.pg_control_system())"

// noSystemIdentifier reports whether err is the server refusing
// pg_control_system to the role, or not having it.
func noSystemIdentifier(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "42883") // insufficient_privilege, undefined_function
}

// txLocationQuery reads where an application's transaction is, and
// whether its database has the backend's tables ($1 is the schema). It
// reads catalogs only, so that it cannot fail, and abort the transaction,
// on a database without the schema or whose schema the role may not use.
const txLocationQuery = `SELECT pg_catalog.current_database(), %s,
	EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = 'pipeline_executions')`

var (
	txLocationWithSystem = fmt.Sprintf(txLocationQuery, systemIdentifier)
	txLocationNoSystem   = fmt.Sprintf(txLocationQuery, "0::bigint")
)

// txMayReadSystem asks whether the transaction's role may call
// pg_control_system. Its role may not be the pool's (SET ROLE), and a
// statement calling the function without the right fails, and aborts the
// transaction, whatever guards it: PostgreSQL checks the right when it
// plans the call.
const txMayReadSystem = `SELECT pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')`

// sameLocation reports whether a and b are the same server and database,
// by database name alone where either side could not read the server's
// system identifier.
func sameLocation(a, b location) bool {
	return a.database == b.database && (a.system == b.system || a.system == 0 || b.system == 0)
}

// checkTxLocation fails with driver.ErrWrongDatabase unless tx is on the
// pool's server and database.
func (d *Driver) checkTxLocation(ctx context.Context, tx pgx.Tx) error {
	own, err := d.location(ctx, false)
	if err != nil {
		return err
	}
	query := txLocationNoSystem
	if own.system != 0 {
		var may bool
		if err := tx.QueryRow(ctx, txMayReadSystem).Scan(&may); err != nil {
			return fmt.Errorf("postgres: check the transaction's database: %w", mapError(err))
		}
		if may {
			query = txLocationWithSystem
		}
	}
	var got location
	var tables bool
	if err := tx.QueryRow(ctx, query, d.schema).Scan(&got.database, &got.system, &tables); err != nil {
		return fmt.Errorf("postgres: check the transaction's database: %w", mapError(err))
	}
	if sameLocation(got, own) {
		return nil
	}
	// The pool may have moved to another server since its location was
	// read (a restore, an upgrade): read it again before refusing.
	if own, err = d.location(ctx, true); err != nil {
		return err
	}
	if sameLocation(got, own) {
		return nil
	}
	where := fmt.Sprintf("database %q", got.database)
	if got.system != own.system && got.system != 0 && own.system != 0 {
		where += fmt.Sprintf(" of another server (system identifier %d, this backend's is %d)", got.system, own.system)
	}
	if tables {
		where += fmt.Sprintf(", which has Cloacina tables of its own in schema %q", d.schema)
	} else {
		where += fmt.Sprintf(", which has no Cloacina tables in schema %q", d.schema)
	}
	return fmt.Errorf("postgres: %w: the transaction is on %s; this backend's tables are in schema %q of database %q: "+
		"begin the transaction on the backend's database, Driver.Pool() (from a runner: Runner.Driver().(*postgres.Driver).Pool())",
		driver.ErrWrongDatabase, where, d.schema, own.database)
}

// location returns where the pool is connected, as schemaAccess last
// recorded it; it reads it first when it never did, or when fresh is set.
func (d *Driver) location(ctx context.Context, fresh bool) (location, error) {
	if !fresh {
		d.whereMu.Lock()
		where := d.where
		d.whereMu.Unlock()
		if where != nil {
			return *where, nil
		}
	}
	if _, err := d.schemaAccess(ctx); err != nil {
		return location{}, err
	}
	d.whereMu.Lock()
	defer d.whereMu.Unlock()
	return *d.where, nil
}

func (d *Driver) setLocation(l location) {
	d.whereMu.Lock()
	d.where = &l
	d.whereMu.Unlock()
}
