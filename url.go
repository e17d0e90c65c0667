package cloacina

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
)

// DatabaseURL is a parsed database URL.
type DatabaseURL struct {
	// Backend is "sqlite" or "postgres".
	Backend string
	// Path is the SQLite file path.
	Path string
	// DSN is the PostgreSQL connection string, without Cloacina's own
	// query parameters.
	DSN string
	// Schema is the PostgreSQL schema from the URL's schema parameter.
	Schema string
}

// pgParamsHelp ends the error of a PostgreSQL URL of the right shape
// whose host, port or parameters pgx refuses.
const pgParamsHelp = "correct the part named; the parameters accepted are pgx's: " +
	"https://pkg.go.dev/github.com/jackc/pgx/v5/pgconn#ParseConfig and https://pkg.go.dev/github.com/jackc/pgx/v5/pgxpool#ParseConfig"

const urlHelp = "use sqlite:///absolute/path.db, sqlite://relative.db or postgres://user:password@host:5432/database"

// ParseDatabaseURL parses a database URL:
//
//	sqlite:///absolute/path/to/file.db   (file created if missing)
//	sqlite://relative/path.db
//	postgres://user:pass@host:5432/db?sslmode=disable&schema=tenant_a
//	postgresql://…                       (the same)
//
// A SQLite path is taken literally, without percent-decoding, so
// sqlite://data/team#1.db is the file data/team#1.db; it cannot hold "?".
//
// The schema parameter selects the PostgreSQL schema; every other
// parameter goes to pgx. A search_path parameter (or options setting
// search_path) without schema is an error: Cloacina names its schema in
// every statement and never reads search_path, so that URL would
// otherwise use public. Behind a transaction-pooling pooler such as
// PgBouncer, add default_query_exec_mode=exec (see package
// driver/postgres).
func ParseDatabaseURL(raw string) (*DatabaseURL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("%w: empty: %s", ErrInvalidURL, urlHelp)
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		scheme, path, found := strings.Cut(raw, ":")
		if found && isSQLiteScheme(scheme) {
			return nil, fmt.Errorf("%w: %q lacks the // after %s:, write %s://%s: %s", ErrInvalidURL, raw, scheme, scheme, path, urlHelp)
		}
		// Without "://" no parser finds the password to hide, so the text
		// is repeated only when it cannot hold one.
		switch {
		case found && isPostgresScheme(scheme):
			return nil, fmt.Errorf("%w: the URL lacks the // after %s: (its text is not repeated, as it may hold a password): %s", ErrInvalidURL, scheme, urlHelp)
		case strings.Contains(raw, "="):
			return nil, fmt.Errorf("%w: a key=value connection string is not a URL (its text is not repeated, as it may hold a password): write it as a URL, passing other settings as query parameters (postgres://user:password@host:5432/database?sslmode=require): %s",
				ErrInvalidURL, urlHelp)
		case strings.ContainsAny(raw, "@:"):
			return nil, fmt.Errorf("%w: the URL has no scheme (its text is not repeated, as it may hold a password): %s", ErrInvalidURL, urlHelp)
		}
		return nil, fmt.Errorf("%w: %q has no scheme: %s", ErrInvalidURL, raw, urlHelp)
	}
	switch strings.ToLower(scheme) {
	case "sqlite", "sqlite3":
		path := rest
		if i := strings.IndexByte(path, '?'); i >= 0 {
			return nil, fmt.Errorf("%w: %q: SQLite URLs take no parameters (Cloacina sets the pragmas): %s", ErrInvalidURL, raw, urlHelp)
		}
		if path == "" {
			return nil, fmt.Errorf("%w: %q names no file: %s", ErrInvalidURL, raw, urlHelp)
		}
		if path == ":memory:" || strings.HasPrefix(path, "file::memory:") {
			return nil, fmt.Errorf("%w: in-memory SQLite cannot be shared by the runner's connections: use a file, e.g. sqlite:///tmp/cloacina.db", ErrInvalidURL)
		}
		return &DatabaseURL{Backend: "sqlite", Path: path}, nil
	case "postgres", "postgresql":
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %s", ErrInvalidURL, redactErr(err), urlHelp)
		}
		if u.Host == "" && u.Query().Get("host") == "" {
			return nil, fmt.Errorf("%w: %q has no host: %s", ErrInvalidURL, redact(raw), urlHelp)
		}
		q := u.Query()
		schema := q.Get("schema")
		switch vs := q["schema"]; {
		case len(vs) > 1:
			return nil, fmt.Errorf("%w: %q sets schema %d times: set it once", ErrInvalidURL, redact(raw), len(vs))
		case len(vs) == 1 && vs[0] == "":
			// Fail closed, as for search_path: an unset shell variable
			// (schema=$TENANT) must not put a tenant's tables in public.
			return nil, fmt.Errorf("%w: %q has an empty schema parameter: name the schema (schema=tenant_a), or leave the parameter out to use public",
				ErrInvalidURL, redact(raw))
		}
		if schema == "" && (q.Has("search_path") || strings.Contains(q.Get("options"), "search_path")) {
			// Fail closed: whoever wrote this meant a schema, and without
			// schema= Cloacina would use public.
			return nil, fmt.Errorf("%w: %q sets search_path, which Cloacina does not use (every statement names its schema): select the schema with schema=NAME", ErrInvalidURL, redact(raw))
		}
		q.Del("schema")
		u.RawQuery = q.Encode()
		if schema != "" {
			if err := postgres.ValidateSchema(schema); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
			}
		}
		// pgx's own parameters (port, sslmode, connect_timeout, pool
		// sizes…) are checked here, before anything connects.
		if _, err := pgxpool.ParseConfig(u.String()); err != nil {
			return nil, fmt.Errorf("%w: %s: %s", ErrInvalidURL, err, pgParamsHelp)
		}
		return &DatabaseURL{Backend: "postgres", DSN: u.String(), Schema: schema}, nil
	}
	return nil, fmt.Errorf("%w: unsupported scheme %q: %s", ErrInvalidURL, scheme, urlHelp)
}

// redact hides a password in a URL for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

func redactErr(err error) string {
	var ue *url.Error
	if e, ok := err.(*url.Error); ok {
		ue = e
		return ue.Err.Error()
	}
	return err.Error()
}

// openDriver opens the backend a URL names, read-only if asked. schema
// overrides the URL's.
func openDriver(ctx context.Context, raw, schema string, readOnly bool) (driver.Driver, error) {
	u, err := ParseDatabaseURL(raw)
	if err != nil {
		return nil, err
	}
	switch u.Backend {
	case "sqlite":
		if schema != "" {
			return nil, fmt.Errorf("%w: a schema (%q) was asked for, but SQLite has no schemas: use one database file per tenant", ErrInvalidURL, schema)
		}
		if readOnly {
			return sqlite.OpenReadOnly(u.Path)
		}
		return sqlite.Open(u.Path)
	default:
		if schema == "" {
			schema = u.Schema
		} else if u.Schema != "" && u.Schema != schema {
			return nil, fmt.Errorf("%w: Config.Schema %q and the URL's schema parameter %q disagree: select the schema in one place", ErrInvalidURL, schema, u.Schema)
		}
		return postgres.Open(ctx, u.DSN, &postgres.Opts{Schema: schema, ReadOnly: readOnly})
	}
}

func isPostgresScheme(s string) bool {
	s = strings.ToLower(s)
	return s == "postgres" || s == "postgresql"
}

func isSQLiteScheme(s string) bool {
	s = strings.ToLower(s)
	return s == "sqlite" || s == "sqlite3"
}
