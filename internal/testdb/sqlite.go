package testdb

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// SQLiteHotJournal returns the path of a SQLite file, in a directory of
// its own, that a writer left in the middle of a transaction, as a crash
// would: the database is in rollback-journal mode and its hot -journal
// holds pages the transaction overwrote, which a connection that may
// write must put back before the file can be read.
func SQLiteHotJournal(t testing.TB) string {
	t.Helper()
	src := SQLitePath(t)
	// With synchronous on, SQLite writes the journal's header zeroed and
	// fills it in only when it syncs the journal, before the first page it
	// spills into the database file; a journal whose first byte is zero is
	// not hot. Whether the update below spilled before the copy is up to
	// the page cache (under load it did not always), so synchronous is off:
	// the header is then written whole at once.
	db, err := sql.Open("sqlite", "file:"+src+"?_pragma=journal_mode(DELETE)&_pragma=synchronous(OFF)&_pragma=cache_size(5)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A cache of 5 pages makes the update spill into the file itself.
	for _, stmt := range []string{
		"CREATE TABLE t (x)",
		"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) INSERT INTO t SELECT zeroblob(1000) FROM n",
		"BEGIN",
		"UPDATE t SET x = zeroblob(999)",
	} {
		if _, err := conn.ExecContext(t.Context(), stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	journal, err := os.ReadFile(src + "-journal")
	if err != nil {
		t.Fatal(err)
	}
	if len(journal) == 0 || journal[0] == 0 {
		t.Fatalf("the -journal of %s is not hot (%d bytes, header zeroed): SQLite would ignore it", src, len(journal))
	}
	dst := filepath.Join(t.TempDir(), "hot.db")
	for _, suffix := range []string{"", "-journal"} {
		data, err := os.ReadFile(src + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	return dst
}
