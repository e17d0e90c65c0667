// Package testdb gives every test its own database: a fresh SQLite file or
// a fresh PostgreSQL schema, removed when the test ends. PostgreSQL is
// required: a test that asks for it fails when it is unreachable, so a
// green run always includes the PostgreSQL half of the suite.
package testdb

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable holding the PostgreSQL URL tests use.
const EnvURL = "CLOACINA_TEST_DATABASE_URL"

// EnvMarker names a file that gets one line per PostgreSQL schema a test
// creates; CI checks it to prove the PostgreSQL tests ran.
const EnvMarker = "CLOACINA_TEST_PG_MARKER"

// DefaultURL is the PostgreSQL database used when EnvURL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// PostgresURL returns the base PostgreSQL URL for tests.
func PostgresURL() string {
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return DefaultURL
}

// SQLitePath returns the path of a new SQLite file in the test's temp dir.
func SQLitePath(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "cloacina.db")
}

// SQLiteURL returns a sqlite:// URL for a new file.
func SQLiteURL(t testing.TB) string {
	t.Helper()
	return "sqlite://" + SQLitePath(t)
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b)
}

var markerMu sync.Mutex

// NewSchema returns the name of a schema that does not exist yet (the
// code under test creates it) and drops it with everything in it when the
// test ends. It fails the test when PostgreSQL is unreachable.
func NewSchema(t testing.TB) string {
	t.Helper()
	schema := randomName("test_")
	requirePostgres(t)
	mark(t)
	t.Cleanup(func() { DropSchema(t, schema) })
	return schema
}

// UsesPostgres fails the test, naming the fix, when PostgreSQL is
// unreachable, and records it among the tests that used PostgreSQL (see
// EnvMarker): for tests that make their schemas by other means than
// NewSchema.
func UsesPostgres(t testing.TB) {
	t.Helper()
	requirePostgres(t)
	mark(t)
}

// requirePostgres fails the test, naming the fix, when PostgreSQL is
// unreachable.
func requirePostgres(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, PostgresURL())
	if err != nil {
		t.Fatalf("PostgreSQL is required by this test and is unreachable at %s: %v\n"+
			"start it (pg_ctlcluster <version> main start) or set %s", PostgresURL(), err, EnvURL)
	}
	conn.Close(ctx)
}

// DropSchema drops a schema and everything in it.
func DropSchema(t testing.TB, schema string) {
	dropSchemaAt(t, PostgresURL(), schema)
}

// OtherDatabase is the database of the test server that tests use as
// another database than the one PostgresURL names: initdb creates it in
// every cluster.
const OtherDatabase = "postgres"

// OtherDatabaseURL returns the test URL moved to OtherDatabase (select
// the schema with WithSchema, or the backend's options) and drops schema
// there, with everything in it, when the test ends. It fails the test when PostgreSQL is unreachable or
// PostgresURL names OtherDatabase already.
func OtherDatabaseURL(t testing.TB, schema string) string {
	t.Helper()
	requirePostgres(t)
	mark(t)
	u, err := url.Parse(PostgresURL())
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	if strings.TrimPrefix(u.Path, "/") == OtherDatabase {
		t.Fatalf("testdb: %s names database %q, which tests use as another database: point it at another one", EnvURL, OtherDatabase)
	}
	u.Path = "/" + OtherDatabase
	base := u.String()
	t.Cleanup(func() { dropSchemaAt(t, base, schema) })
	return base
}

// dropSchemaAt drops a schema and everything in it from the database at
// url.
func dropSchemaAt(t testing.TB, url, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
	}
}

// PostgresSchemaURL returns the test URL with a new schema selected.
func PostgresSchemaURL(t testing.TB) string {
	t.Helper()
	return WithSchema(PostgresURL(), NewSchema(t))
}

// WithSchema adds a schema parameter to a PostgreSQL URL.
func WithSchema(raw, schema string) string {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err)
	}
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Backend names a database backend and makes a fresh database URL for it.
type Backend struct {
	Name string
	URL  func(t testing.TB) string
}

// Backends lists SQLite and PostgreSQL.
func Backends() []Backend {
	return []Backend{
		{Name: "sqlite", URL: SQLiteURL},
		{Name: "postgres", URL: PostgresSchemaURL},
	}
}

// DirFiles describes every file in dir by size and SHA-256, so a test can
// show that reading a SQLite database left its directory as it was. A
// -shm file (SQLite's shared-memory index, which readers may rewrite) is
// listed by name only.
func DirFiles(t testing.TB, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), "-shm") {
			out[e.Name()] = "(index)"
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatalf("testdb: %v", err)
		}
		out[e.Name()] = fmt.Sprintf("%d bytes, sha256 %x", len(data), sha256.Sum256(data))
	}
	return out
}
