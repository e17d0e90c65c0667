package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// AdminSchema holds the tenant registry, cloacina_admin.tenants: one row
// per tenant made by [Admin.TenantCreate]. Only the administrator can read
// it (PUBLIC has no privilege on it), so a tenant cannot list the others.
// A schema is a tenant if and only if it has a row there; TenantDrop drops
// nothing else. The first administrator to create a tenant creates the
// registry and owns it; grant other administrator roles USAGE on the
// schema and SELECT, INSERT, UPDATE, DELETE on the table.
const AdminSchema = "cloacina_admin"

// Sentinel errors of tenant administration.
var (
	// ErrTenantExists is returned by TenantCreate when the schema, the role
	// or the registry entry already exists.
	ErrTenantExists = errors.New("tenant already exists")
	// ErrTenantNotFound is returned by TenantDrop for a name that is not in
	// the tenant registry.
	ErrTenantNotFound = errors.New("tenant not found")
)

// ValidateTenant checks a tenant (schema) name: what [ValidateSchema]
// accepts, except public and the registry's own schema.
func ValidateTenant(name string) error {
	if !schemaName.MatchString(name) {
		return fmt.Errorf("invalid tenant name %q: use 1–63 letters, digits and underscores, not starting with a digit", name)
	}
	if err := ValidateSchema(name); err != nil {
		return fmt.Errorf("invalid tenant name %q: pg_* and information_schema are reserved by PostgreSQL", name)
	}
	switch strings.ToLower(name) {
	case "public":
		return fmt.Errorf("invalid tenant name %q: public is shared by every role of the database: choose a name of the tenant's own", name)
	case AdminSchema:
		return fmt.Errorf("invalid tenant name %q: %s holds the tenant registry: choose another name", name, AdminSchema)
	}
	return nil
}

// ValidateRole checks a role name: 1–63 letters, digits and underscores,
// not starting with a digit, not pg_* (reserved for PostgreSQL's own
// roles) and not a word PostgreSQL gives a meaning in role positions.
func ValidateRole(name string) error {
	if !schemaName.MatchString(name) {
		return fmt.Errorf("invalid role name %q: use 1–63 letters, digits and underscores, not starting with a digit", name)
	}
	lower := strings.ToLower(name)
	if strings.HasPrefix(lower, "pg_") {
		return fmt.Errorf("invalid role name %q: pg_* roles are reserved by PostgreSQL", name)
	}
	switch lower {
	case "public", "none", "current_user", "current_role", "session_user":
		return fmt.Errorf("invalid role name %q: %s is reserved by PostgreSQL", name, lower)
	}
	return nil
}

// ValidatePassword checks a password given for a tenant role: 1–1024
// printable ASCII characters. Other characters are refused because
// PostgreSQL normalises passwords (SASLprep) before hashing them, so a
// verifier hashed here could disagree with the server for them.
func ValidatePassword(password string) error {
	if password == "" || len(password) > 1024 {
		return errors.New("invalid password: use 1–1024 printable ASCII characters, or let cloacina generate one")
	}
	for _, c := range []byte(password) {
		if c < 0x20 || c > 0x7e {
			return errors.New("invalid password: use printable ASCII characters only (letters, digits, punctuation, space), or let cloacina generate one")
		}
	}
	return nil
}

// Admin administers the tenants of one database. It connects as an
// administrator: a superuser, or a role with CREATEROLE and CREATE on the
// database. Use a direct connection, not a transaction pooler: it sets
// the role migrations run as for the connection's whole session.
type Admin struct {
	pool *pgxpool.Pool
	cfg  *pgxpool.Config
	// dropLockTimeout bounds how long TenantDrop waits for the tenant's
	// open transactions.
	dropLockTimeout string
}

// OpenAdmin connects to the database at url as an administrator.
func OpenAdmin(ctx context.Context, url string) (*Admin, error) {
	pool, cfg, err := connect(ctx, url, func(cfg *pgxpool.Config) { cfg.MaxConns = 2 })
	if err != nil {
		return nil, err
	}
	return &Admin{pool: pool, cfg: cfg, dropLockTimeout: "30s"}, nil
}

// Close closes the administrator's connections.
func (a *Admin) Close() { a.pool.Close() }

// TenantCreateParams describes a tenant to create.
type TenantCreateParams struct {
	// Schema is the tenant's schema, and its name in the registry.
	Schema string
	// Role is the LOGIN role that owns the schema.
	Role string
	// Password is the role's password; it is sent to the server only as a
	// SCRAM-SHA-256 verifier.
	Password string
}

// TenantCreate creates a tenant: a LOGIN role with the given password, a
// schema owned by that role, a registry row, and the tables, migrated as
// the role so that it owns them and can apply later migrations itself.
//
// The role gets CONNECT on the database and ownership of its schema,
// nothing else; PUBLIC's privileges on the schema are revoked. Nothing in
// a new schema is open to PUBLIC in PostgreSQL 15 (only functions would
// be, and Cloacina creates none), so other tenants' roles cannot even look
// up its tables.
//
// Role, schema and registry row are created in one transaction. When the
// migrations fail afterwards, the tenant is dropped again.
func (a *Admin) TenantCreate(ctx context.Context, params *TenantCreateParams) error {
	if err := ValidateTenant(params.Schema); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := ValidateRole(params.Role); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := ValidatePassword(params.Password); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	verifier, err := ScramVerifier(params.Password)
	if err != nil {
		return err
	}
	if !scramVerifierPattern.MatchString(verifier) {
		return fmt.Errorf("postgres: internal error: malformed password verifier")
	}
	schema, role := pgx.Identifier{params.Schema}.Sanitize(), pgx.Identifier{params.Role}.Sanitize()

	err = a.inTx(ctx, func(tx pgx.Tx) error {
		if err := ensureRegistry(ctx, tx); err != nil {
			return err
		}
		var registered, schemaExists, roleExists, superuser bool
		var database string
		if err := tx.QueryRow(ctx, `SELECT
				EXISTS (SELECT 1 FROM `+AdminSchema+`.tenants WHERE schema_name = $1 OR role_name = $2),
				EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1),
				EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $2),
				(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
				current_database()`, params.Schema, params.Role).
			Scan(&registered, &schemaExists, &roleExists, &superuser, &database); err != nil {
			return fmt.Errorf("inspect: %w", mapError(err))
		}
		switch {
		case registered:
			return fmt.Errorf("%w: a tenant with schema %q or role %q is already registered: `cloacina tenant list` shows them", ErrTenantExists, params.Schema, params.Role)
		case schemaExists:
			return fmt.Errorf("%w: schema %q already exists in database %q: choose another tenant name (cloacina never takes over an existing schema)", ErrTenantExists, params.Schema, database)
		case roleExists:
			return fmt.Errorf("%w: role %q already exists (roles are shared by every database of the server): choose another role name", ErrTenantExists, params.Role)
		}
		stmts := []string{
			// The password goes as a SCRAM verifier literal: CREATE ROLE takes
			// no bind parameters, and the verifier holds no quote (checked above).
			"CREATE ROLE " + role + " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '" + verifier + "'",
		}
		if !superuser {
			// A non-superuser administrator must be a member of the role to
			// make it the schema's owner and to migrate as it.
			stmts = append(stmts, "GRANT "+role+" TO CURRENT_USER")
		}
		stmts = append(stmts,
			"CREATE SCHEMA "+schema+" AUTHORIZATION "+role,
			"REVOKE ALL ON SCHEMA "+schema+" FROM PUBLIC",
			"GRANT CONNECT ON DATABASE "+pgx.Identifier{database}.Sanitize()+" TO "+role,
		)
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", strings.SplitN(s, " PASSWORD ", 2)[0], mapError(err))
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+AdminSchema+`.tenants (schema_name, role_name) VALUES ($1, $2)`, params.Schema, params.Role); err != nil {
			return fmt.Errorf("register: %w", mapError(err))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("postgres: create tenant %s: %w", params.Schema, err)
	}
	if err := a.migrateAs(ctx, params.Schema, params.Role); err != nil {
		if dropErr := a.TenantDrop(context.WithoutCancel(ctx), params.Schema); dropErr != nil {
			err = errors.Join(err, fmt.Errorf("and dropping the half-made tenant failed: %w", dropErr))
		}
		return fmt.Errorf("postgres: create tenant %s: %w", params.Schema, err)
	}
	return nil
}

// migrateAs applies the migrations to schema on a connection whose
// current_user is role (the "role" startup parameter, as SET ROLE), so the
// tables belong to the tenant, and checks the result with the tenant's
// own privileges.
func (a *Admin) migrateAs(ctx context.Context, schema, role string) error {
	cfg := a.cfg.Copy()
	cfg.MaxConns = 1
	cfg.ConnConfig.RuntimeParams["role"] = role
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect as %s: %w", role, mapError(err))
	}
	defer pool.Close()
	d, err := New(pool, &Opts{Schema: schema})
	if err != nil {
		return err
	}
	return d.Migrate(ctx)
}

// TenantDrop drops a registered tenant: its schema with everything in it,
// the role's remaining privileges and objects in this database, the role,
// and its registry row, in one transaction. Stop the tenant's runners
// first: the drop waits at most 30 seconds for their open transactions.
// A name that is not registered is refused with ErrTenantNotFound, so
// TenantDrop never drops a schema or role that Cloacina did not create.
func (a *Admin) TenantDrop(ctx context.Context, name string) error {
	if err := ValidateTenant(name); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	notFound := fmt.Errorf("%w: no tenant %q is registered in %s.tenants: `cloacina tenant list` shows the tenants", ErrTenantNotFound, name, AdminSchema)
	err := a.inTx(ctx, func(tx pgx.Tx) error {
		var registry bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", AdminSchema+".tenants").Scan(&registry); err != nil {
			return fmt.Errorf("tenant registry: %w", mapError(err))
		}
		if !registry {
			return notFound
		}
		var roleName, database string
		var roleExists bool
		err := tx.QueryRow(ctx, `SELECT role_name, EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name), current_database()
			FROM `+AdminSchema+`.tenants WHERE schema_name = $1 FOR UPDATE`, name).Scan(&roleName, &roleExists, &database)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound
		}
		if err != nil {
			return fmt.Errorf("look up: %w", mapError(err))
		}
		role := pgx.Identifier{roleName}.Sanitize()
		stmts := []string{
			"SET LOCAL lock_timeout = '" + a.dropLockTimeout + "'",
			"DROP SCHEMA IF EXISTS " + pgx.Identifier{name}.Sanitize() + " CASCADE",
		}
		if roleExists {
			stmts = append(stmts,
				"REVOKE ALL ON DATABASE "+pgx.Identifier{database}.Sanitize()+" FROM "+role,
				// Whatever else the role was granted or came to own here.
				"DROP OWNED BY "+role,
				"DROP ROLE "+role,
			)
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, mapError(err))
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+AdminSchema+`.tenants WHERE schema_name = $1`, name); err != nil {
			return fmt.Errorf("unregister: %w", mapError(err))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("postgres: drop tenant %s: %w", name, err)
	}
	return nil
}

// TenantInfo describes a registered tenant.
type TenantInfo struct {
	Schema    string
	Role      string
	CreatedAt time.Time
	// SchemaVersion is the tenant's applied migration version.
	SchemaVersion int
	// Runs, Tasks, Events and Outbox count the rows of the tenant's
	// pipeline executions, task executions, execution events and task
	// outbox.
	Runs, Tasks, Events, Outbox int64
	// Problem says what is wrong with a tenant changed outside Cloacina
	// (schema, role or tables missing); empty when it is whole.
	Problem string
}

// TenantList returns the registered tenants, by schema name, with their
// schema versions and exact row counts.
func (a *Admin) TenantList(ctx context.Context) ([]*TenantInfo, error) {
	var exists bool
	if err := a.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", AdminSchema+".tenants").Scan(&exists); err != nil {
		return nil, fmt.Errorf("postgres: list tenants: %w", mapError(err))
	}
	if !exists {
		return nil, nil
	}
	rows, err := a.pool.Query(ctx, `SELECT t.schema_name, t.role_name, t.created_at,
			EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = t.schema_name),
			EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = t.role_name),
			ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = t.schema_name AND c.relkind IN ('r', 'p'))
		FROM `+AdminSchema+`.tenants t ORDER BY t.schema_name`)
	if err != nil {
		return nil, fmt.Errorf("postgres: list tenants: %w", mapError(err))
	}
	type found struct {
		info         *TenantInfo
		schemaExists bool
		roleExists   bool
		tables       []string
	}
	var all []found
	for rows.Next() {
		var f found
		f.info = &TenantInfo{}
		if err := rows.Scan(&f.info.Schema, &f.info.Role, &f.info.CreatedAt, &f.schemaExists, &f.roleExists, &f.tables); err != nil {
			rows.Close()
			return nil, fmt.Errorf("postgres: list tenants: %w", mapError(err))
		}
		f.info.CreatedAt = f.info.CreatedAt.UTC()
		all = append(all, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list tenants: %w", mapError(err))
	}
	out := make([]*TenantInfo, 0, len(all))
	for _, f := range all {
		var problems []string
		if !f.roleExists {
			problems = append(problems, "role "+f.info.Role+" missing")
		}
		if !f.schemaExists {
			problems = append(problems, "schema missing")
		} else if err := a.countRows(ctx, f.info, f.tables, &problems); err != nil {
			return nil, err
		}
		f.info.Problem = strings.Join(problems, "; ")
		out = append(out, f.info)
	}
	return out, nil
}

// countRows fills a tenant's version and row counts from whichever of its
// tables exist, noting the missing ones.
func (a *Admin) countRows(ctx context.Context, info *TenantInfo, present []string, problems *[]string) error {
	have := map[string]bool{}
	for _, t := range present {
		have[t] = true
	}
	schema := pgx.Identifier{info.Schema}.Sanitize()
	targets := []struct {
		table string
		expr  string
		dst   any
	}{
		{"cloacina_migrations", "COALESCE(MAX(version), 0)", &info.SchemaVersion},
		{"pipeline_executions", "count(*)", &info.Runs},
		{"task_executions", "count(*)", &info.Tasks},
		{"execution_events", "count(*)", &info.Events},
		{"task_outbox", "count(*)", &info.Outbox},
	}
	var selects []string
	var dsts []any
	var missing []string
	for _, t := range targets {
		if !have[t.table] {
			missing = append(missing, t.table)
			continue
		}
		selects = append(selects, "(SELECT "+t.expr+" FROM "+schema+"."+t.table+")")
		dsts = append(dsts, t.dst)
	}
	if len(missing) > 0 {
		*problems = append(*problems, "table(s) "+strings.Join(missing, ", ")+" missing")
	}
	if len(selects) == 0 {
		return nil
	}
	err := a.pool.QueryRow(ctx, "SELECT "+strings.Join(selects, ", ")).Scan(dsts...)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Not readable by this administrator, or changed under our feet:
		// report it on this tenant and go on with the others.
		*problems = append(*problems, "cannot count rows: "+pgErr.Message)
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres: count rows of tenant %s: %w", info.Schema, mapError(err))
	}
	return nil
}

// inTx runs fn in a transaction holding the registry's advisory lock, so
// administrators in several processes take turns.
func (a *Admin) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return mapError(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "cloacina_admin"); err != nil {
		return fmt.Errorf("lock the tenant registry: %w", mapError(err))
	}
	if err := fn(tx); err != nil {
		return adminHint(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", mapError(err))
	}
	return nil
}

// adminHint adds what to do to the errors an administrator can fix.
func adminHint(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "42501": // insufficient_privilege
		return fmt.Errorf("%w (the administrator role needs CREATEROLE, CREATE on the database, and — once another role has "+
			"created the registry — USAGE on schema %s and SELECT, INSERT, UPDATE, DELETE on %s.tenants, granted by the registry's owner)",
			err, AdminSchema, AdminSchema)
	case "55P03": // lock_not_available
		return fmt.Errorf("%w (the tenant's tables are in use: stop the tenant's runners and try again)", err)
	}
	return err
}

// ensureRegistry creates the registry schema and table when missing,
// closed to PUBLIC. Callers hold the registry lock.
func ensureRegistry(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", AdminSchema+".tenants").Scan(&exists); err != nil {
		return fmt.Errorf("tenant registry: %w", mapError(err))
	}
	if exists {
		return nil
	}
	for _, s := range []string{
		"CREATE SCHEMA IF NOT EXISTS " + AdminSchema,
		"REVOKE ALL ON SCHEMA " + AdminSchema + " FROM PUBLIC",
		`CREATE TABLE ` + AdminSchema + `.tenants (
			schema_name text PRIMARY KEY,
			role_name   text NOT NULL UNIQUE,
			created_at  timestamptz NOT NULL DEFAULT now())`,
		"REVOKE ALL ON " + AdminSchema + ".tenants FROM PUBLIC",
	} {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("create the tenant registry: %w", mapError(err))
		}
	}
	return nil
}
