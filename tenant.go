package cloacina

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/cloacina-go/cloacina/driver/postgres"
)

// Tenant errors, for errors.Is.
var (
	// ErrSchemaAccess is returned by Open, OpenPool and Migrate when the
	// connected PostgreSQL role cannot use the selected schema: no USAGE on
	// it, no right to create it, or no privileges on its tables. The
	// runner refuses to open rather than work anywhere else.
	ErrSchemaAccess = postgres.ErrSchemaAccess
	// ErrTenantExists is returned by CreateTenant when the schema, the role
	// or the tenant already exists.
	ErrTenantExists = postgres.ErrTenantExists
	// ErrTenantNotFound is returned by DropTenant for a name that is not a
	// registered tenant.
	ErrTenantNotFound = postgres.ErrTenantNotFound
)

// TenantOpts configures CreateTenant. A nil *TenantOpts means defaults.
type TenantOpts struct {
	// Role is the LOGIN role the tenant connects as. Roles are shared by
	// every database of a server, so pick distinct names when several
	// databases hold tenants. Default: the tenant's name.
	Role string
	// Password is the role's password: 1–1024 printable ASCII characters.
	// Default: 32 random bytes from crypto/rand, base64url encoded.
	Password string
}

// Tenant is a tenant made by CreateTenant.
type Tenant struct {
	// Schema holds the tenant's tables; it is the tenant's name.
	Schema string
	// Role is the LOGIN role that owns Schema.
	Role string
	// Password is Role's password.
	Password string
	// URL connects as Role to Schema: the administrator URL's host, port,
	// database and parameters with the tenant's user, password and schema.
	// Pass it to Open.
	URL string
}

// TenantInfo describes a registered tenant, as listed by ListTenants.
type TenantInfo struct {
	Schema    string
	Role      string
	CreatedAt time.Time
	// SchemaVersion is the migration version of the tenant's tables.
	SchemaVersion int
	// Runs, Tasks, Events and Outbox are exact row counts of the tenant's
	// runs, task executions, execution events and queued task outbox rows.
	Runs, Tasks, Events, Outbox int64
	// Problem says what is wrong with a tenant changed outside Cloacina
	// (its schema, role or tables missing); empty when it is whole.
	Problem string
}

// CreateTenant creates a tenant on the PostgreSQL database at adminURL,
// connected as an administrator (a superuser, or a role with CREATEROLE
// and CREATE on the database, over a direct connection rather than a
// transaction pooler):
//
//   - a LOGIN role (TenantOpts.Role, default name) with the given or a
//     generated password, holding CONNECT on the database and nothing else;
//   - a schema called name, owned by that role, with PUBLIC's privileges
//     revoked, so other tenants' roles cannot use it;
//   - a row in the tenant registry, cloacina_admin.tenants, readable by
//     administrators only: a schema is a tenant if and only if it is
//     registered there, and DropTenant drops nothing else;
//   - Cloacina's tables, migrated as the tenant's role so that it owns them
//     and can apply later migrations when a newer runner opens.
//
// Names are checked before any SQL runs: 1–63 letters, digits and
// underscores, not starting with a digit, not public, cloacina_admin,
// pg_* or information_schema (and, while the role takes the tenant's
// name, not none, current_user, current_role or session_user). The password never reaches the server in clear:
// CREATE ROLE receives a SCRAM-SHA-256 verifier computed here (CREATE
// ROLE takes no bind parameters; the verifier's alphabet cannot break out
// of its literal), and names are quoted as identifiers.
//
// With a SQLite URL CreateTenant fails with ErrInvalidURL: on SQLite a
// tenant is a database file of its own, which Open creates.
func CreateTenant(ctx context.Context, adminURL, name string, opts *TenantOpts) (*Tenant, error) {
	var o TenantOpts
	if opts != nil {
		o = *opts
	}
	if o.Role == "" {
		o.Role = name
	}
	if err := postgres.ValidateTenant(name); err != nil {
		return nil, fmt.Errorf("cloacina: %w", err)
	}
	if err := postgres.ValidateRole(o.Role); err != nil {
		return nil, fmt.Errorf("cloacina: %w", err)
	}
	if o.Password == "" {
		p, err := postgres.GeneratePassword()
		if err != nil {
			return nil, err
		}
		o.Password = p
	} else if err := postgres.ValidatePassword(o.Password); err != nil {
		return nil, fmt.Errorf("cloacina: %w", err)
	}
	u, err := adminDatabase(adminURL)
	if err != nil {
		return nil, err
	}
	tenantURL, err := tenantURL(adminURL, name, o.Role, o.Password)
	if err != nil {
		return nil, err
	}
	admin, err := postgres.OpenAdmin(ctx, u.DSN)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	if err := admin.TenantCreate(ctx, &postgres.TenantCreateParams{Schema: name, Role: o.Role, Password: o.Password}); err != nil {
		return nil, err
	}
	return &Tenant{Schema: name, Role: o.Role, Password: o.Password, URL: tenantURL}, nil
}

// DropTenant drops a tenant made by CreateTenant, in one transaction: its
// schema with all its runs, tasks and events, the role's privileges and
// anything else it owns in the database, the role, and its registry row.
// Stop the tenant's runners first: the drop waits at most 30 seconds for
// their open transactions. A name that is not registered fails with
// ErrTenantNotFound, so no other schema or role is ever dropped.
func DropTenant(ctx context.Context, adminURL, name string) error {
	if err := postgres.ValidateTenant(name); err != nil {
		return fmt.Errorf("cloacina: %w", err)
	}
	u, err := adminDatabase(adminURL)
	if err != nil {
		return err
	}
	admin, err := postgres.OpenAdmin(ctx, u.DSN)
	if err != nil {
		return err
	}
	defer admin.Close()
	return admin.TenantDrop(ctx, name)
}

// ListTenants returns the registered tenants of the database at adminURL,
// by name, with their schema versions and row counts. A database without
// tenants returns none.
func ListTenants(ctx context.Context, adminURL string) ([]TenantInfo, error) {
	u, err := adminDatabase(adminURL)
	if err != nil {
		return nil, err
	}
	admin, err := postgres.OpenAdmin(ctx, u.DSN)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	infos, err := admin.TenantList(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]TenantInfo, len(infos))
	for i, t := range infos {
		out[i] = TenantInfo{Schema: t.Schema, Role: t.Role, CreatedAt: t.CreatedAt, SchemaVersion: t.SchemaVersion,
			Runs: t.Runs, Tasks: t.Tasks, Events: t.Events, Outbox: t.Outbox, Problem: t.Problem}
	}
	return out, nil
}

// adminDatabase parses an administrator URL, which must be PostgreSQL.
func adminDatabase(adminURL string) (*DatabaseURL, error) {
	u, err := ParseDatabaseURL(adminURL)
	if err != nil {
		return nil, err
	}
	if u.Backend != "postgres" {
		return nil, fmt.Errorf("%w: tenants are PostgreSQL schemas, and %q is a SQLite database: on SQLite a tenant is a database file of its own, e.g. sqlite:///var/lib/app/<tenant>.db, which Open creates",
			ErrInvalidURL, adminURL)
	}
	return u, nil
}

// tenantURL is adminURL with the tenant's user, password and schema: the
// same host, port, database and connection parameters.
func tenantURL(adminURL, schema, role, password string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", fmt.Errorf("%w: %s", ErrInvalidURL, redactErr(err))
	}
	u.User = url.UserPassword(role, password)
	q := u.Query()
	q.Del("user")
	q.Del("password")
	q.Del("search_path")
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
