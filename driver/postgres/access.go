package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ErrSchemaAccess is returned when the connected role cannot use the
// backend's schema: it lacks USAGE on it, may not create it, or lacks
// privileges on one of its tables. It is reported when the backend opens
// (by Migrate and MigrationVersion), so a misconfigured tenant fails at
// once instead of at its first write.
var ErrSchemaAccess = errors.New("schema not usable by this database role")

// tables are the tables the engine reads and writes; every one must be in
// the backend's schema and open to the connected role for SELECT, INSERT,
// UPDATE and DELETE, but for channelTable, which a runner only reads (to
// listen) and a read-only backend does not use.
var tables = []string{
	"cloacina_migrations",
	channelTable,
	"pipeline_executions",
	"task_executions",
	"task_outbox",
	"execution_events",
	"cloacina_runners",
	"cloacina_lease_terms",
	"cloacina_schedules",
	"cloacina_schedule_ticks",
}

// channelTable keeps the name of the schema's NOTIFY channel (migration 10).
const channelTable = "cloacina_channel"

// schemaAccess is what the connected role may do with the schema.
type schemaAccess struct {
	role      string
	database  string
	system    int64 // the server's system identifier; 0 when the role may not read it
	exists    bool
	usage     bool
	createDB  bool // may create schemas in the database
	createSch bool // may create tables in the schema
}

// schemaAccessQuery reads a schemaAccess; %s is the server's system
// identifier.
const schemaAccessQuery = `SELECT current_user, current_database(), %s, n.oid IS NOT NULL,
		COALESCE(has_schema_privilege(n.oid, 'USAGE'), false),
		has_database_privilege(current_database(), 'CREATE'),
		COALESCE(has_schema_privilege(n.oid, 'CREATE'), false)
	FROM (SELECT cardinality($2::uuid[]) + cardinality($3::uuid[]) + cardinality($4::uuid[]) + cardinality($5::text[])
		+ cardinality($6::int[]) + cardinality($7::timestamptz[])) AS probe
	LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1`

// schemaAccess reads what the connected role may do with the schema, and
// records where the pool is connected (see UnwrapTx).
func (d *Driver) schemaAccess(ctx context.Context) (*schemaAccess, error) {
	a, err := d.readSchemaAccess(ctx, systemIdentifier)
	if noSystemIdentifier(err) {
		a, err = d.readSchemaAccess(ctx, "0::bigint")
	}
	if err != nil {
		return nil, err
	}
	d.setLocation(location{system: a.system, database: a.database})
	return a, nil
}

func (d *Driver) readSchemaAccess(ctx context.Context, system string) (*schemaAccess, error) {
	var a schemaAccess
	// The arrays are bound only to find out now, rather than at the first
	// write, whether the pool can send them (see RegisterTypes).
	err := d.pool.QueryRow(ctx, fmt.Sprintf(schemaAccessQuery, system), d.schema, []uuid.UUID{uuid.Nil}, []*uuid.UUID{nil},
		make(uuidArray, 1), make(textArray, 1), make(int4Array, 1), make(timeArray, 1)).
		Scan(&a.role, &a.database, &a.system, &a.exists, &a.usage, &a.createDB, &a.createSch)
	if noSystemIdentifier(err) {
		return nil, err
	}
	if err != nil && strings.Contains(err.Error(), "unable to encode") {
		return nil, fmt.Errorf("postgres: the pool cannot send UUIDs in its query exec mode (%s): call postgres.RegisterTypes from the pool's AfterConnect hook: %w",
			d.pool.Config().ConnConfig.DefaultQueryExecMode, err)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: check access to schema %s: %w", d.schema, mapError(err))
	}
	return &a, nil
}

// checkUsable fails when the schema exists and the role has no USAGE on
// it.
func (a *schemaAccess) checkUsable(schema string) error {
	if a.exists && !a.usage {
		return fmt.Errorf("postgres: %w: role %q has no USAGE privilege on schema %q: connect as the schema's tenant role (the URL `cloacina tenant create` printed), or have an administrator run GRANT USAGE ON SCHEMA %s TO %s",
			ErrSchemaAccess, a.role, schema, pgx.Identifier{schema}.Sanitize(), pgx.Identifier{a.role}.Sanitize())
	}
	return nil
}

// checkMigratable fails unless Migrate can bring the schema up to date as
// the connected role: create the schema when missing, and create tables
// in it (Migrate's CREATE TABLE IF NOT EXISTS needs that even when
// nothing is pending).
func (d *Driver) checkMigratable(ctx context.Context) error {
	a, err := d.schemaAccess(ctx)
	if err != nil {
		return err
	}
	if err := a.checkUsable(d.schema); err != nil {
		return err
	}
	if !a.exists && !a.createDB {
		return fmt.Errorf("postgres: %w: schema %q does not exist in database %q and role %q may not create it: create the tenant first (`cloacina tenant create %s`), or check the schema name",
			ErrSchemaAccess, d.schema, a.database, a.role, d.schema)
	}
	if a.exists && !a.createSch && d.schema == DefaultSchema {
		return fmt.Errorf("postgres: %w: role %q may not create tables in schema \"public\", the default used when no schema is selected: select the tenant's schema with schema=NAME in the URL (or Config.Schema)",
			ErrSchemaAccess, a.role)
	}
	if a.exists && !a.createSch {
		return fmt.Errorf("postgres: %w: role %q may not create tables in schema %q, so it cannot migrate it: migrate as the schema's owner (`cloacina migrate`) and open with migrations skipped",
			ErrSchemaAccess, a.role, d.schema)
	}
	return nil
}

// checkUsableNow fails when the schema exists but the connected role may
// not use it.
func (d *Driver) checkUsableNow(ctx context.Context) error {
	a, err := d.schemaAccess(ctx)
	if err != nil {
		return err
	}
	return a.checkUsable(d.schema)
}

// verifyTables checks that every table the engine uses is in the schema
// and open to the connected role for reading and writing (only reading
// with readOnly), so that a missing grant fails here rather than at a
// task's first write.
func (d *Driver) verifyTables(ctx context.Context, readOnly bool) error {
	names := tables
	if readOnly {
		names = slices.DeleteFunc(slices.Clone(tables), func(n string) bool { return n == channelTable })
	}
	rows, err := d.pool.Query(ctx, `SELECT t.name, c.oid IS NOT NULL,
			COALESCE(has_table_privilege(c.oid, 'SELECT') AND ($3 OR t.name = $4 OR (has_table_privilege(c.oid, 'INSERT')
				AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE'))), false)
		FROM unnest($2::text[]) WITH ORDINALITY AS t(name, ord)
		LEFT JOIN pg_catalog.pg_class c ON c.relname = t.name AND c.relkind IN ('r', 'p')
			AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)
		ORDER BY t.ord`, d.schema, names, readOnly, channelTable)
	if err != nil {
		return fmt.Errorf("postgres: check tables of schema %s: %w", d.schema, mapError(err))
	}
	var missing, denied []string
	for rows.Next() {
		var name string
		var found, allowed bool
		if err := rows.Scan(&name, &found, &allowed); err != nil {
			rows.Close()
			return fmt.Errorf("postgres: check tables of schema %s: %w", d.schema, mapError(err))
		}
		switch {
		case !found:
			missing = append(missing, name)
		case !allowed:
			denied = append(denied, name)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("postgres: check tables of schema %s: %w", d.schema, mapError(err))
	}
	switch {
	case len(missing) > 0:
		return fmt.Errorf("postgres: %w: schema %q lacks table(s) %s after migrating: the schema was changed by hand; restore it or create a new tenant",
			ErrSchemaAccess, d.schema, strings.Join(missing, ", "))
	case len(denied) > 0 && readOnly:
		return fmt.Errorf("postgres: %w: the connected role may not read table(s) %s in schema %q: connect as a role that may, or grant SELECT on them",
			ErrSchemaAccess, strings.Join(denied, ", "), d.schema)
	case len(denied) > 0:
		return fmt.Errorf("postgres: %w: the connected role may not read and write table(s) %s in schema %q: connect as the schema's tenant role, or grant SELECT, INSERT, UPDATE, DELETE on them",
			ErrSchemaAccess, strings.Join(denied, ", "), d.schema)
	}
	return nil
}
