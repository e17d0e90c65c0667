package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// target is a fresh database for one engine in one round: a new
// PostgreSQL schema or a new SQLite file. drop removes it.
type target struct {
	Backend string `json:"backend"`
	// Schema is the PostgreSQL schema (empty on SQLite).
	Schema string `json:"schema,omitempty"`
	// BaseURL is the PostgreSQL URL without a schema.
	BaseURL string `json:"base_url,omitempty"`
	// Path is the SQLite file.
	Path string `json:"path,omitempty"`

	admin *pgxpool.Pool // PostgreSQL: shared admin pool, not owned
	ro    *sql.DB       // SQLite: read connection for checks
}

func randomSuffix() string {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// newTarget makes a fresh database for engine ("ours" or "river") in
// scenario. The PostgreSQL schema is created for River only: ours creates
// and migrates its schema on Open.
func (h *harness) newTarget(ctx context.Context, backend, engine, scenario string) (*target, error) {
	name := fmt.Sprintf("bench_%s_%s_%s", engine, scenario, randomSuffix())
	switch backend {
	case "postgres":
		t := &target{Backend: backend, Schema: name, BaseURL: h.cfg.PostgresURL, admin: h.admin}
		if engine == "river" {
			if _, err := h.admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
				return nil, fmt.Errorf("create schema %s: %w", name, err)
			}
		}
		return t, nil
	case "sqlite":
		return &target{Backend: backend, Path: filepath.Join(h.workdir, name+".db")}, nil
	}
	return nil, fmt.Errorf("unknown backend %q", backend)
}

// oursURL is the Cloacina database URL of the target.
func (t *target) oursURL() string { return t.urlVia("") }

// urlVia is oursURL with the PostgreSQL host:port replaced by hostport
// (for the counting proxy); "" keeps it.
func (t *target) urlVia(hostport string) string {
	if t.Backend == "sqlite" {
		return "sqlite://" + t.Path
	}
	u, err := url.Parse(t.BaseURL)
	if err != nil {
		panic(err) // validated at start
	}
	if hostport != "" {
		u.Host = hostport
	}
	q := u.Query()
	q.Set("schema", t.Schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// pgURLVia is the plain PostgreSQL URL (no schema parameter) through
// hostport, or direct when hostport is "".
func (t *target) pgURLVia(hostport string) string {
	u, err := url.Parse(t.BaseURL)
	if err != nil {
		panic(err)
	}
	if hostport != "" {
		u.Host = hostport
	}
	return u.String()
}

// riverSQLiteDSN opens River's SQLite file with the same durability
// settings Cloacina uses (WAL, synchronous=NORMAL, a busy timeout).
func (t *target) riverSQLiteDSN() string {
	return "file:" + t.Path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)"
}

// table returns the qualified name of a table in the target.
func (t *target) table(name string) string {
	if t.Backend == "postgres" {
		return pgx.Identifier{t.Schema, name}.Sanitize()
	}
	return name
}

// scalar runs a query returning one integer.
func (t *target) scalar(ctx context.Context, q string) (int64, error) {
	var n int64
	if t.Backend == "postgres" {
		err := t.admin.QueryRow(ctx, q).Scan(&n)
		return n, err
	}
	if t.ro == nil {
		db, err := sql.Open("sqlite", "file:"+t.Path+"?_pragma=busy_timeout(10000)&mode=ro")
		if err != nil {
			return 0, err
		}
		db.SetMaxOpenConns(1)
		t.ro = db
	}
	err := t.ro.QueryRowContext(ctx, q).Scan(&n)
	return n, err
}

// groupCounts runs a query returning (text, count) rows.
func (t *target) groupCounts(ctx context.Context, q string) (map[string]int64, error) {
	if t.Backend == "postgres" {
		rows, err := t.admin.Query(ctx, q)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return collectCounts(rows)
	}
	if _, err := t.scalar(ctx, "SELECT 1"); err != nil {
		return nil, err
	}
	rows, err := t.ro.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectCounts(rows)
}

// countRows is what pgx.Rows and *sql.Rows share.
type countRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// collectCounts reads (text, count) rows into a map.
func collectCounts(rows countRows) (map[string]int64, error) {
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, rows.Err()
}

// waitZero polls q until it returns 0, or until timeout. It is used only
// after the probe saw every unit run, to find when the engine has also
// recorded every completion.
func (t *target) waitZero(ctx context.Context, q string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := t.scalar(ctx, q)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %d rows not completed %s after every unit ran", n, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// drop removes the target's database.
func (t *target) drop(ctx context.Context) error {
	var errs []error
	if t.ro != nil {
		errs = append(errs, t.ro.Close())
		t.ro = nil
	}
	switch t.Backend {
	case "postgres":
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := t.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{t.Schema}.Sanitize()+" CASCADE"); err != nil {
			errs = append(errs, fmt.Errorf("drop schema %s: %w", t.Schema, err))
		}
	case "sqlite":
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(t.Path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
