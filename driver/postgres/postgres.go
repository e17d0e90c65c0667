// Package postgres is the PostgreSQL backend of Cloacina, built on pgx v5
// and pgxpool.
//
// Every statement names its schema explicitly (schema-qualified SQL), so the
// backend never depends on search_path and can never fall back to another
// schema through it. Claims use FOR UPDATE SKIP LOCKED; wake-ups are NOTIFY
// sent inside the enqueuing transaction and received on a dedicated
// connection outside the pool. Their channel's name is drawn at random
// when the schema is created and kept in it (cloacina_channel): channels
// belong to the whole database and need no privilege, so a name derived
// from the schema would let any role of the database, another tenant's
// included, hear the schema's wake-ups (which name workflows and
// cancelled runs) and send it false ones. A role that cannot read the
// schema cannot learn the name.
//
// # Access checks
//
// Migrate and MigrationVersion check first that the connected role may use
// the schema, and Migrate checks afterwards that every table is in that
// schema and readable and writable by the role (MigrationVersion does too
// once the schema is up to date; with Opts.ReadOnly it asks only that the
// tables be readable). A role that cannot use its schema gets an error
// wrapping [ErrSchemaAccess] when the backend opens, never a later write
// somewhere else.
//
// # Tenants
//
// [Admin] creates, lists and drops tenants: a schema owned by a login role
// of its own, recorded in the [AdminSchema] registry. Package cloacina's
// CreateTenant, ListTenants and DropTenant wrap it.
//
// # Transaction-pooling connection poolers
//
// The backend keeps no state in a session between transactions: no
// search_path, no SET, no session-level advisory locks, no prepared
// statements of its own. pgx does, by default: it prepares and caches
// named statements on every connection (default_query_exec_mode
// cache_statement), which a pooler in transaction mode cannot follow from
// one server connection to the next (PgBouncer fails with "prepared
// statement … already exists" or "does not exist" unless its
// max_prepared_statements support, new in 1.21, is on). Behind such a
// pooler, add
//
//	default_query_exec_mode=exec
//
// to the URL: every statement is then sent in one round trip on the
// unnamed statement, with its parameters in text, and nothing outlives the
// statement. That mode needs to know how to send the Go types the backend
// binds: [Open] registers them on every connection it makes
// ([RegisterTypes]); a pool the application hands to [New] must call
// RegisterTypes in its AfterConnect hook (the backend checks at open).
// cache_describe and simple_protocol work as well.
//
// LISTEN needs a session of its own, so through a transaction pooler
// wake-ups are not delivered and runners find new work by polling
// (Config.PollInterval in package cloacina) instead. Tenant administration
// needs a direct connection too.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cloacina-go/cloacina/driver"
)

// DefaultSchema is the schema used when none is given.
const DefaultSchema = "public"

// Opts configures the backend. A nil *Opts means defaults.
type Opts struct {
	// Schema holds every Cloacina table. Default: "public". It is created
	// on Migrate when missing.
	Schema string
	// ReadOnly opens the backend for reading only, for tools and
	// dashboards that must not change the database: Begin and Migrate
	// return [driver.ErrReadOnly], and MigrationVersion asks only for
	// SELECT on the tables, so a role that may only read them can use it.
	// Open also makes every session read-only (default_transaction_read_only,
	// sent when connecting), so the server refuses any write; a pool handed
	// to New keeps whatever sessions the application configured. A
	// transaction-pooling pooler such as PgBouncer may refuse that startup
	// parameter: list it in its ignore_startup_parameters, or connect
	// directly. Default: false.
	ReadOnly bool
}

// Driver is the PostgreSQL backend. It is safe for concurrent use.
type Driver struct {
	pool       *pgxpool.Pool
	owned      bool
	readOnly   bool
	schema     string
	listenConf *pgx.ConnConfig
	q          *queries

	whereMu sync.Mutex
	where   *location // the pool's, recorded by schemaAccess

	created atomic.Bool // Migrate created the schema
}

// CreatedSchema reports whether Migrate created the schema, which did not
// exist before: what Open logs, since a mistyped schema name in a URL
// otherwise gives a working, empty store with no word about it.
func (d *Driver) CreatedSchema() bool { return d.created.Load() }

var schemaName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// ValidateSchema checks a schema name: 1–63 letters, digits and
// underscores, not starting with a digit, and not a system schema.
func ValidateSchema(name string) error {
	if !schemaName.MatchString(name) {
		return fmt.Errorf("invalid schema name %q: use 1–63 letters, digits and underscores, not starting with a digit", name)
	}
	lower := strings.ToLower(name)
	if strings.HasPrefix(lower, "pg_") || lower == "information_schema" {
		return fmt.Errorf("invalid schema name %q: pg_* and information_schema are reserved by PostgreSQL", name)
	}
	return nil
}

// connect opens a pool on url, with the backend's types registered on
// every connection, and checks that the server answers. tune, if set,
// adjusts the configuration first.
func connect(ctx context.Context, url string, tune func(*pgxpool.Config)) (*pgxpool.Pool, *pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: parse database URL: %w", err)
	}
	// Under default_query_exec_mode=exec or simple_protocol, pgx picks
	// parameter types from Go types: teach it the backend's.
	cfg.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		RegisterTypes(conn.TypeMap())
		return nil
	}
	if tune != nil {
		tune(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("postgres: connect to %s:%d/%s: %w%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database,
			mapError(err), connectFix(err, cfg.ConnConfig))
	}
	return pool, cfg, nil
}

// connectFix says how to mend the URL or the server for the refusals of
// a connection that a setting, not a passing fault, causes; "" for others.
func connectFix(err error, cfg *pgx.ConnConfig) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return ""
	}
	switch pgErr.Code {
	case "3D000": // invalid_catalog_name
		return fmt.Sprintf(": create the database (createdb %s) or correct its name in the URL", cfg.Database)
	case "28000", "28P01": // invalid_authorization_specification, invalid_password
		return fmt.Sprintf(": check the user (%s) and password in the URL, PGPASSWORD or ~/.pgpass, and the server's pg_hba.conf", cfg.User)
	case "42704": // undefined_object: an unknown query parameter reached the server as a setting
		return ": the URL sets a parameter PostgreSQL does not know: check the spelling of its query parameters (cloacina's own is schema=)"
	}
	return ""
}

// Open connects a new pool to the PostgreSQL database at url.
func Open(ctx context.Context, url string, opts *Opts) (*Driver, error) {
	var tune func(*pgxpool.Config)
	if opts != nil && opts.ReadOnly {
		tune = func(cfg *pgxpool.Config) {
			cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
		}
	}
	pool, _, err := connect(ctx, url, tune)
	if err != nil {
		return nil, err
	}
	d, err := New(pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	d.owned = true
	return d, nil
}

// New returns a backend on a pool the application already has. Close does
// not close the pool.
func New(pool *pgxpool.Pool, opts *Opts) (*Driver, error) {
	if pool == nil {
		return nil, errors.New("postgres: New needs a *pgxpool.Pool: create one with pgxpool.New, or connect by URL with postgres.Open")
	}
	schema := DefaultSchema
	if opts != nil && opts.Schema != "" {
		schema = opts.Schema
	}
	if err := ValidateSchema(schema); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return &Driver{
		pool:       pool,
		readOnly:   opts != nil && opts.ReadOnly,
		schema:     schema,
		listenConf: pool.Config().ConnConfig.Copy(),
		q:          newQueries(schema),
	}, nil
}

// RegisterTypes registers on a connection's type map the PostgreSQL types
// of the Go values the backend binds (UUIDs, and arrays of UUIDs, text,
// integers and times), which pgx needs when it does not ask the server
// for parameter types: under default_query_exec_mode exec or
// simple_protocol, as used behind a transaction-pooling pooler. It also
// registers a codec that encodes the backend's array parameters in one
// pass (every other value, and scanning, are left to pgx's codecs); a
// pool without it works in the default mode, spending more memory and
// CPU per statement. [Open] calls it for every connection; call it from
// the AfterConnect hook of a pool passed to [New]:
//
//	cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
//		postgres.RegisterTypes(c.TypeMap())
//		return nil
//	}
func RegisterTypes(m *pgtype.Map) {
	m.RegisterDefaultPgType(uuid.UUID{}, "uuid")
	m.RegisterDefaultPgType([]uuid.UUID{}, "_uuid")
	m.RegisterDefaultPgType(&uuid.UUID{}, "uuid")
	m.RegisterDefaultPgType([]*uuid.UUID{}, "_uuid")
	m.RegisterDefaultPgType([16]byte{}, "uuid")
	m.RegisterDefaultPgType([][16]byte{}, "_uuid")
	m.RegisterDefaultPgType([]pgtype.UUID{}, "_uuid")
	// The hot paths bind arrays of pgtype values (see params.go).
	m.RegisterDefaultPgType(uuidArray{}, "_uuid")
	m.RegisterDefaultPgType(textArray{}, "_text")
	m.RegisterDefaultPgType(int4Array{}, "_int4")
	m.RegisterDefaultPgType(timeArray{}, "_timestamptz")
	registerArrayCodecs(m)
}

// Name returns "postgres".
func (d *Driver) Name() string { return "postgres" }

// Schema returns the schema holding this backend's tables.
func (d *Driver) Schema() string { return d.schema }

// Pool returns the connection pool.
func (d *Driver) Pool() *pgxpool.Pool { return d.pool }

// ReadOnly reports whether the backend was opened with Opts.ReadOnly.
func (d *Driver) ReadOnly() bool { return d.readOnly }

// Begin starts a transaction on the pool. A backend opened with
// Opts.ReadOnly returns [driver.ErrReadOnly].
func (d *Driver) Begin(ctx context.Context) (driver.Tx, error) {
	if d.readOnly {
		return nil, readOnlyError("begin", d.schema)
	}
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: begin: %w", mapError(err))
	}
	t := &pgTx{pool: d.pool, conn: conn}
	t.executor = executor{db: t, q: d.q}
	return t, nil
}

// Reader returns an executor on the pool, outside transactions.
func (d *Driver) Reader() driver.Executor {
	return &executor{db: d.pool, q: d.q}
}

// UnwrapTx returns an executor inside the application's pgx.Tx, once a
// read in tx (one or two statements) shows that tx is on the backend's
// server (by its system identifier, which its streaming replicas share,
// where the roles may read it; else by the database's name alone) and
// database. Every
// statement names the backend's schema, so a transaction on another
// database would write there, should that database hold a schema of the
// same name (such as public), or fail with an error that names neither
// database; it fails with [driver.ErrWrongDatabase] instead, leaving tx
// as it was, not aborted. The pool's location is read when the backend
// opens (by Migrate or MigrationVersion); a backend that ran neither
// reads it at its first UnwrapTx, on another connection of the pool.
func (d *Driver) UnwrapTx(ctx context.Context, tx any) (driver.Executor, error) {
	pgxTx, ok := tx.(pgx.Tx)
	if !ok || pgxTx == nil {
		if _, isSQL := tx.(*sql.Tx); isSQL {
			// database/sql over pgx's stdlib: the transaction is one pgx
			// cannot reach from the *sql.Tx.
			return nil, fmt.Errorf("%w: the PostgreSQL backend needs a pgx.Tx, got a *sql.Tx: begin the transaction with pgx instead (pgxpool.Pool.Begin; from database/sql, sql.Conn.Raw hands over a *stdlib.Conn whose Conn method is the *pgx.Conn to Begin on)", driver.ErrWrongTxType)
		}
		return nil, fmt.Errorf("%w: the PostgreSQL backend needs a pgx.Tx, got %T", driver.ErrWrongTxType, tx)
	}
	if err := d.checkTxLocation(ctx, pgxTx); err != nil {
		return nil, err
	}
	return &executor{db: pgxTx, q: d.q}, nil
}

// Listen opens a dedicated connection (outside the pool, so it never holds
// a pooled connection idle) and listens on the schema's channel, whose
// name the schema keeps (see the package documentation).
func (d *Driver) Listen(ctx context.Context) (driver.Subscription, error) {
	conn, err := pgx.ConnectConfig(ctx, d.listenConf)
	if err != nil {
		return nil, fmt.Errorf("postgres: listen: connect: %w", mapError(err))
	}
	var channel string
	if err := conn.QueryRow(ctx, d.q.channel).Scan(&channel); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("postgres: listen: read the channel of schema %s (is it migrated?): %w", d.schema, mapError(err))
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("postgres: listen on the channel of schema %s: %w", d.schema, mapError(err))
	}
	return &subscription{conn: conn}, nil
}

// Close closes the pool if Open created it.
func (d *Driver) Close() error {
	if d.owned {
		d.pool.Close()
	}
	return nil
}

type subscription struct {
	conn *pgx.Conn
}

func (s *subscription) Wait(ctx context.Context) (string, error) {
	n, err := s.conn.WaitForNotification(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("postgres: wait for notification: %w", mapError(err))
	}
	return n.Payload, nil
}

func (s *subscription) Close() error {
	return s.conn.Close(context.Background())
}

// conflictCode is raised by cloacina_expect_rows (migration 5) when a
// conditional update finds a row in another status than expected.
const conflictCode = "CL001"

// mapError maps pgx and PostgreSQL errors onto the driver's sentinels. It
// is the one place that knows PostgreSQL's error codes.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %w", driver.ErrNotFound, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if pgErr.Code == conflictCode {
			return fmt.Errorf("%w: %w", driver.ErrConflict, err)
		}
		if pgErr.Code == "55P03" { // lock_not_available: NOWAIT, or lock_timeout passed
			return fmt.Errorf("%w: %w: %w", driver.ErrTransient, driver.ErrLockWait, err)
		}
		switch {
		case pgErr.Code == "40001", // serialization_failure
			pgErr.Code == "40P01",               // deadlock_detected
			pgErr.Code == "53300",               // too_many_connections
			pgErr.Code == "57P01",               // admin_shutdown
			pgErr.Code == "57P02",               // crash_shutdown
			pgErr.Code == "57P03",               // cannot_connect_now
			pgErr.Code == "57P05",               // idle_session_timeout: the session is gone, a new one will do
			pgErr.Code == "25P03",               // idle_in_transaction_session_timeout: likewise
			pgErr.Code == "25006",               // read_only_sql_transaction: a standby's session, closed on release (pgTx.release); a new one may be the primary's
			pgErr.Code == "57014",               // query_canceled: statement_timeout (our own cancellations return above)
			pgErr.Code == "53100",               // disk_full
			pgErr.Code == "53200",               // out_of_memory
			strings.HasPrefix(pgErr.Code, "08"): // connection exceptions
			return fmt.Errorf("%w: %w", driver.ErrTransient, err)
		case strings.HasPrefix(pgErr.Code, "22"), // data_exception: a value the types refuse
			strings.HasPrefix(pgErr.Code, "54"): // program_limit_exceeded: too large
			return fmt.Errorf("%w: %w", driver.ErrValueRejected, err)
		}
		return err
	}
	// pgx refuses, before sending, a message over PostgreSQL's 1 GB limit
	// (a statement whose values add up to that much); it reports the write
	// as safe to retry, but every retry fails the same way.
	if strings.Contains(err.Error(), "message body too large") {
		return fmt.Errorf("%w: %w (a statement's values exceed PostgreSQL's 1 GB message limit: keep contexts smaller)", driver.ErrValueRejected, err)
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	if pgconn.SafeToRetry(err) || errors.As(err, &netErr) || errors.As(err, &connectErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "conn closed") {
		return fmt.Errorf("%w: %w", driver.ErrTransient, err)
	}
	return err
}
