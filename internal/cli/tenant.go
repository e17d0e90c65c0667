package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver/postgres"
)

// EnvTenantPassword names the environment variable `tenant create` reads
// a password from; without it a password is generated. There is no
// --password flag: command lines are visible to every user of a machine.
const EnvTenantPassword = "CLOACINA_TENANT_PASSWORD"

func (a *app) tenantCommand() *cobra.Command {
	return groupCommand("tenant", "Create, list and drop PostgreSQL tenants (a schema and a role each)",
		a.tenantCreateCommand(), a.tenantListCommand(), a.tenantDropCommand())
}

const tenantLong = `

A tenant is a PostgreSQL schema owned by a login role of its own: the role
can use its schema and nothing of other tenants'. --database-url connects
as an administrator (a superuser, or a role with CREATEROLE and CREATE on
the database), directly rather than through a transaction pooler. Tenants
are recorded in cloacina_admin.tenants; drop only drops what is recorded
there. On SQLite a tenant is a database file of its own: no command needed.`

func (a *app) tenantCreateCommand() *cobra.Command {
	var role string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a tenant: schema, login role, tables; print its database URL",
		Long: `create makes a tenant called NAME: a schema NAME, a login role (--role, default
NAME) that owns it and may connect to the database, and Cloacina's tables,
migrated as that role. It prints the database URL to give the tenant's
runners: the administrator URL's host, port, database and parameters with the
tenant's user, password and schema.

The password is $` + EnvTenantPassword + ` when set, else 32 random bytes. It is sent
to the server only as a SCRAM-SHA-256 verifier.` + tenantLong,
		Example: `  url=$(cloacina --database-url postgres://postgres@db:5432/app tenant create acme | tail -n1)
  cloacina --database-url "$url" demo`,
		Args: exactArgs(1, "a tenant name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if role == "" {
				role = name
			}
			password := a.getenv(EnvTenantPassword)
			if err := validateTenant(cmd, name, role, password); err != nil {
				return err
			}
			d, err := a.adminDatabase(cmd)
			if err != nil {
				return err
			}
			tn, err := cloacina.CreateTenant(cmd.Context(), d.url, name, &cloacina.TenantOpts{Role: role, Password: password})
			if err != nil {
				return d.tenantError(err)
			}
			_, err = fmt.Fprintf(a.stdout, "tenant %s created (schema %s, role %s); its database URL:\n%s\n", tn.Schema, tn.Schema, tn.Role, d.withoutAddedParams(tn.URL))
			return err
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "name of the tenant's login role (default NAME)")
	return cmd
}

func (a *app) tenantListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tenants with their schema versions and row counts",
		Long:  `list shows every registered tenant, its role, schema version and row counts.` + tenantLong,
		Example: `  cloacina --database-url postgres://postgres@db:5432/app tenant list
  cloacina --database-url postgres://postgres@db:5432/app tenant list --json | jq -r 'select(.problem != "") | .name'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.adminDatabase(cmd)
			if err != nil {
				return err
			}
			tenants, err := cloacina.ListTenants(cmd.Context(), d.url)
			if err != nil {
				return d.tenantError(err)
			}
			if asJSON {
				return writeJSONLines(a.stdout, tenants, func(t cloacina.TenantInfo) any { return newTenantJSON(&t) })
			}
			if len(tenants) == 0 {
				_, err := fmt.Fprintln(a.stdout, "no tenants")
				return err
			}
			tb := newTable("TENANT", "ROLE", "VERSION", "RUNS", "TASKS", "EVENTS", "QUEUED", "CREATED", "PROBLEM").alignRight(2, 3, 4, 5, 6)
			for _, t := range tenants {
				tb.add(t.Schema, t.Role, strconv.Itoa(t.SchemaVersion), count(t.Runs), count(t.Tasks), count(t.Events), count(t.Outbox),
					formatTime(t.CreatedAt), t.Problem)
			}
			return tb.render(a.stdout)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON Lines, one tenant a line")
	return cmd
}

// tenantJSON is a tenant in `tenant list --json`: queued counts its
// outbox rows (the table's QUEUED), and problem is empty for a whole
// tenant.
type tenantJSON struct {
	Name          string    `json:"name"`
	Role          string    `json:"role"`
	SchemaVersion int       `json:"schema_version"`
	Runs          int64     `json:"runs"`
	Tasks         int64     `json:"tasks"`
	Events        int64     `json:"events"`
	Queued        int64     `json:"queued"`
	CreatedAt     time.Time `json:"created_at"`
	Problem       string    `json:"problem"`
}

func newTenantJSON(t *cloacina.TenantInfo) tenantJSON {
	return tenantJSON{Name: t.Schema, Role: t.Role, SchemaVersion: t.SchemaVersion, Runs: t.Runs, Tasks: t.Tasks,
		Events: t.Events, Queued: t.Outbox, CreatedAt: t.CreatedAt.UTC(), Problem: t.Problem}
}

func (a *app) tenantDropCommand() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "drop NAME --yes",
		Short: "Drop a tenant: its schema with all its runs and events, and its role",
		Long: `drop deletes tenant NAME in one transaction: its schema with every run, task
and event in it, the privileges and anything else its role holds in the
database, and the role. It cannot be undone, so it needs --yes. Stop the
tenant's runners first.` + tenantLong,
		Args: exactArgs(1, "a tenant name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := postgres.ValidateTenant(name); err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if !yes {
				return usageErrorf(cmd, "dropping tenant %s deletes its schema with all its runs and events, and its role, for good: add --yes to confirm", name)
			}
			d, err := a.adminDatabase(cmd)
			if err != nil {
				return err
			}
			if err := cloacina.DropTenant(cmd.Context(), d.url, name); err != nil {
				return d.tenantError(err)
			}
			_, err = fmt.Fprintf(a.stdout, "tenant %s dropped: its schema, role and data are gone\n", name)
			return err
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm that the tenant and all its data are to be deleted")
	return cmd
}

// validateTenant checks names and password before anything connects.
func validateTenant(cmd *cobra.Command, name, role, password string) error {
	if err := postgres.ValidateTenant(name); err != nil {
		return usageErrorf(cmd, "%v", err)
	}
	if err := postgres.ValidateRole(role); err != nil {
		return usageErrorf(cmd, "--role: %v", err)
	}
	if password != "" {
		if err := postgres.ValidatePassword(password); err != nil {
			return usageErrorf(cmd, "$%s: %v", EnvTenantPassword, err)
		}
	}
	return nil
}

// adminDatabase resolves the administrator's database, which must be
// PostgreSQL and must not select a schema.
func (a *app) adminDatabase(cmd *cobra.Command) (*database, error) {
	d, err := a.database(cmd)
	if err != nil {
		return nil, err
	}
	if d.parsed.Backend != "postgres" {
		return nil, &usageError{msg: fmt.Sprintf("tenants are PostgreSQL schemas, and the database from %s is SQLite (%s): on SQLite a tenant is a database file of its own; give each tenant its own sqlite:// URL",
			d.source, d.sqlitePath())}
	}
	if d.parsed.Schema != "" {
		return nil, &usageError{msg: fmt.Sprintf("the administrator URL from %s selects schema %s: tenant commands work on the whole database, drop the schema parameter", d.source, d.parsed.Schema)}
	}
	return d, nil
}

// tenantError explains a failed tenant command.
func (d *database) tenantError(err error) error {
	var connectErr *pgconn.ConnectError
	switch {
	case errors.Is(err, context.Canceled):
		return errors.New("interrupted")
	case errors.Is(err, cloacina.ErrInvalidURL), errors.As(err, &connectErr):
		return d.openError(err)
	}
	return err
}

// withoutAddedParams removes from a URL derived from d the parameters
// the CLI added to d's (connect_timeout), so a printed URL carries only
// what the user wrote.
func (d *database) withoutAddedParams(derived string) string {
	raw, err := url.Parse(d.raw)
	if err != nil || raw.Query().Has("connect_timeout") {
		return derived
	}
	u, err := url.Parse(derived)
	if err != nil {
		return derived
	}
	q := u.Query()
	q.Del("connect_timeout")
	u.RawQuery = q.Encode()
	return u.String()
}

func count(n int64) string { return strconv.FormatInt(n, 10) }
