package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
)

// connectTimeout bounds a PostgreSQL connection attempt (pgx's
// connect_timeout, in seconds) unless the URL sets its own: a mistyped
// host should fail in seconds, not after the kernel gives up on it.
const connectTimeout = "10"

// database is the database a command works on, resolved and validated
// before anything is opened.
type database struct {
	url    string // passed to the library
	raw    string // as the user gave it
	parsed *cloacina.DatabaseURL
	source string // where the URL came from, for messages
}

// database resolves the URL (flag, environment, default) and validates it
// without connecting.
func (a *app) database(cmd *cobra.Command) (*database, error) {
	raw, source := a.databaseURL, "--database-url"
	if !cmd.Flags().Changed("database-url") {
		raw, source = a.getenv(EnvDatabaseURL), EnvDatabaseURL
		if raw == "" {
			raw, source = DefaultDatabaseURL, "the default"
		}
	}
	parsed, err := cloacina.ParseDatabaseURL(raw)
	if err != nil {
		return nil, &usageError{msg: fromSource(err, source)}
	}
	db := &database{url: raw, raw: raw, parsed: parsed, source: source}
	if parsed.Backend == "postgres" {
		u, err := url.Parse(raw)
		if err == nil && !u.Query().Has("connect_timeout") {
			q := u.Query()
			q.Set("connect_timeout", connectTimeout)
			u.RawQuery = q.Encode()
			db.url = u.String()
		}
	}
	return db, nil
}

// fromSource names where a rejected URL came from, so the user knows
// whether to fix a flag or the environment.
func fromSource(err error, source string) string {
	msg := oneLine(err.Error())
	const prefix = "invalid database URL"
	if rest, ok := strings.CutPrefix(msg, prefix); ok {
		return prefix + " (from " + source + ")" + rest
	}
	return msg + " (URL from " + source + ")"
}

// sqlitePath returns the absolute path of a SQLite database, or "".
func (d *database) sqlitePath() string {
	if d.parsed.Backend != "sqlite" {
		return ""
	}
	abs, err := filepath.Abs(d.parsed.Path)
	if err != nil {
		return d.parsed.Path
	}
	return abs
}

// String describes the database for messages, without credentials.
func (d *database) String() string {
	if d.parsed.Backend == "sqlite" {
		return d.sqlitePath()
	}
	schema := d.parsed.Schema
	if schema == "" {
		schema = postgres.DefaultSchema
	}
	u, err := url.Parse(d.parsed.DSN)
	if err != nil {
		return "PostgreSQL (schema " + schema + ")"
	}
	return fmt.Sprintf("PostgreSQL %s%s (schema %s)", u.Host, u.Path, schema)
}

// openMode says whether a command may create, migrate or write the
// database.
type openMode int

const (
	// openOrCreate creates a missing SQLite file and applies migrations:
	// for commands whose purpose is to set up or use a database.
	openOrCreate openMode = iota
	// openExisting requires a database already migrated to this version:
	// operator commands must never create or change a schema as a side
	// effect. The version is checked through a read-only open before the
	// database is opened for writing, so a command that fails on it
	// changes nothing.
	openExisting
	// openReadOnly is openExisting for commands that only read: the
	// database is opened read-only (cloacina.Config.ReadOnly), so a user
	// who may only read it can inspect it, and nothing about it changes,
	// down to its journal mode and the files beside it.
	openReadOnly
)

// open opens a runner on d with workflows registered.
func (a *app) open(ctx context.Context, d *database, mode openMode, workflows ...*cloacina.Workflow) (*cloacina.Runner, error) {
	if mode != openOrCreate {
		if err := d.requireSQLiteFile(); err != nil {
			return nil, err
		}
		// Opened for writing, a SQLite file is switched to WAL (its header
		// rewritten) before the runner checks the schema: check it first
		// through a read-only open, so a command that fails writes nothing.
		if err := d.checkSchema(ctx); err != nil {
			return nil, err
		}
	}
	if mode == openOrCreate && d.parsed.Backend != "sqlite" {
		// cloacina.Open retries a server that does not answer until ctx
		// ends, which for a command is an interrupt: try once first, so a
		// wrong URL or a server that is down fails the command at once.
		drv, err := postgres.Open(ctx, d.parsed.DSN, &postgres.Opts{Schema: d.parsed.Schema})
		if err != nil {
			return nil, d.openError(err)
		}
		drv.Close()
	}
	r, err := cloacina.Open(ctx, d.url, &cloacina.Config{
		Workflows:      workflows,
		Logger:         a.logger,
		SkipMigrations: mode == openExisting,
		ReadOnly:       mode == openReadOnly,
	})
	if err != nil {
		return nil, d.openError(err)
	}
	return r, nil
}

// requireSQLiteFile fails when d is a SQLite file that does not exist, so
// operator commands never leave an empty database behind.
func (d *database) requireSQLiteFile() error {
	path := d.sqlitePath()
	if path == "" {
		return nil
	}
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("no database at %s: run `cloacina migrate` or `cloacina demo` first", path)
	case err != nil:
		return fmt.Errorf("database %s: %w", path, err)
	case info.IsDir():
		return fmt.Errorf("database %s is a directory: point --database-url at a file", path)
	case info.Size() == 0:
		// SQLite would take an empty file for an empty database and write
		// its header on open.
		return fmt.Errorf("database %s is an empty file: run `cloacina migrate` or `cloacina demo` first", path)
	}
	return nil
}

// checkSchema fails unless d holds Cloacina's tables at this version,
// reading its schema version through a read-only backend as read
// commands open it. Where a SQLite file can only be read by a writer (a
// log without its index, an interrupted write) it leaves the verdict to
// the open that follows.
func (d *database) checkSchema(ctx context.Context) error {
	p, err := cloacina.ParseDatabaseURL(d.url)
	if err != nil {
		return d.openError(err)
	}
	var drv driver.Driver
	if p.Backend == "sqlite" {
		if drv, err = sqlite.OpenReadOnly(p.Path); err != nil {
			return nil
		}
	} else if drv, err = postgres.Open(ctx, p.DSN, &postgres.Opts{Schema: p.Schema, ReadOnly: true}); err != nil {
		return d.openError(err)
	}
	defer drv.Close()
	current, latest, err := drv.MigrationVersion(ctx)
	switch {
	case err != nil:
		return d.openError(err)
	case current == 0:
		// Another application's file, or a misspelt schema: migrate would
		// add Cloacina's tables to the one or create the other.
		what := "check the path"
		if p.Backend != "sqlite" {
			what = "check the schema name"
		}
		return fmt.Errorf("database %s holds no Cloacina tables: %s, or run `cloacina migrate` to set it up", d, what)
	case current < latest:
		return d.openError(cloacina.ErrSchemaOutdated)
	case current > latest:
		return d.openError(cloacina.ErrSchemaTooNew)
	}
	return nil
}

// openError turns an error from opening or migrating d into a message that
// says what to do.
func (d *database) openError(err error) error {
	var connectErr *pgconn.ConnectError
	switch {
	case errors.Is(err, context.Canceled):
		return errors.New("interrupted while opening the database")
	case errors.Is(err, cloacina.ErrInvalidURL):
		return &usageError{msg: fromSource(err, d.source)}
	case d.parsed.Backend == "sqlite" && strings.HasPrefix(err.Error(), "sqlite: ") &&
		!strings.HasPrefix(err.Error(), "sqlite: open ") && strings.Contains(err.Error(), d.sqlitePath()):
		// The backend's own checks name the file and the fix.
		return errors.New(strings.TrimPrefix(err.Error(), "sqlite: "))
	case d.parsed.Backend == "sqlite" && (strings.Contains(err.Error(), "readonly database") ||
		errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS)):
		return fmt.Errorf("cannot write database %s: this command changes the database, and SQLite may not write the file: "+
			"run it as a user who may write the file and its directory (commands that only read, such as `cloacina runs list`, need read access only)", d)
	case errors.Is(err, cloacina.ErrSchemaOutdated):
		return fmt.Errorf("database %s is not set up for this version of cloacina: run `cloacina migrate` first", d)
	case errors.Is(err, cloacina.ErrSchemaAccess):
		_, why, _ := strings.Cut(err.Error(), cloacina.ErrSchemaAccess.Error()+": ")
		return fmt.Errorf("cannot use database %s: %s", d, why)
	case errors.Is(err, cloacina.ErrSchemaTooNew):
		return fmt.Errorf("database %s was migrated by a newer version of cloacina: upgrade this cloacina binary", d)
	case errors.As(err, &connectErr) && pgCode(err) == "42704":
		// A misspelt URL parameter (schem=x) reaches the server as a
		// setting it does not know.
		return &usageError{msg: fmt.Sprintf("the URL from %s sets a parameter PostgreSQL does not know (%s): check the spelling of its query parameters",
			d.source, connectCause(err))}
	case errors.As(err, &connectErr):
		cfg := connectErr.Config
		return fmt.Errorf("cannot connect to PostgreSQL at %s:%d/%s (%s): check that the server is running and that the URL from %s is right",
			cfg.Host, cfg.Port, cfg.Database, connectCause(err), d.source)
	}
	return fmt.Errorf("open database %s: %w", d, err)
}

// connectCause digs the reason out of a pgx connection error, whose own
// message lists every address tried on lines of its own.
func connectCause(err error) string {
	var pgErr *pgconn.PgError
	var opErr *net.OpError
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Message
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.As(err, &opErr):
		return opErr.Err.Error()
	}
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// pgCode is the SQLSTATE of a PostgreSQL error in err's chain, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
