package sqlite_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// The tests run as root, whom file permissions do not stop, so they prove
// that a read-only open writes nothing by what it leaves behind: the
// bytes of the database and its log, and no -wal or -shm file that was
// not there before.

// newDatabase migrates a database at path with n pipelines and closes it,
// so that, as after any clean shutdown, the database file holds
// everything and no -wal or -shm file is left.
func newDatabase(t *testing.T, path string, n int) []uuid.UUID {
	t.Helper()
	drv, err := sqlite.Open(path)
	require.NoError(t, err)
	require.NoError(t, drv.Migrate(t.Context()))
	ids := insertPipelines(t, drv, n)
	require.NoError(t, drv.Close())
	require.NoFileExists(t, path+"-wal")
	require.NoFileExists(t, path+"-shm")
	return ids
}

func insertPipelines(t *testing.T, drv driver.Driver, n int) []uuid.UUID {
	t.Helper()
	ctx := t.Context()
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	var ids []uuid.UUID
	for range n {
		p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: time.Now()}
		_, err := tx.PipelineInsertMany(ctx, []*driver.PipelineInsertParams{p})
		require.NoError(t, err)
		ids = append(ids, p.ID)
	}
	require.NoError(t, tx.Commit(ctx))
	return ids
}

func countPipelines(t *testing.T, drv driver.Driver) int {
	t.Helper()
	ps, err := drv.Reader().PipelineList(t.Context(), &driver.PipelineListParams{Limit: 1000})
	require.NoError(t, err)
	return len(ps)
}

func requireLatest(t *testing.T, drv driver.Driver) {
	t.Helper()
	current, latest, err := drv.MigrationVersion(t.Context())
	require.NoError(t, err)
	require.Equal(t, latest, current)
}

// A database no process has open is read from its file alone: no -wal or
// -shm file appears, not even while the driver is open, and not a byte
// changes.
func TestOpenReadOnlyClosedDatabase(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	newDatabase(t, path, 3)
	before := testdb.DirFiles(t, filepath.Dir(path))

	ro := openReadOnly(t, path)
	require.True(t, ro.ReadOnly())
	require.Nil(t, ro.DB(), "a read-only driver has no writer pool")
	requireLatest(t, ro)
	require.Equal(t, 3, countPipelines(t, ro))
	_, err := ro.Begin(t.Context())
	require.ErrorIs(t, err, driver.ErrReadOnly)
	require.ErrorContains(t, err, "open it with Open to write")
	require.ErrorIs(t, ro.Migrate(t.Context()), driver.ErrReadOnly)
	require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)), "while open")
	require.NoError(t, ro.Close())
	require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)), "after Close")
}

// A reader opened while no process had the database open sees what a
// writer that starts later commits, and what is left once it stops.
func TestOpenReadOnlyFollowsAWriterThatStartsLater(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	newDatabase(t, path, 1)
	ro := openReadOnly(t, path)
	require.Equal(t, 1, countPipelines(t, ro))

	writer := open(t, path)
	insertPipelines(t, writer, 2)
	require.Equal(t, 3, countPipelines(t, ro), "while the writer is open")
	insertPipelines(t, writer, 1)
	require.Equal(t, 4, countPipelines(t, ro))
	require.NoError(t, writer.Close())
	require.Equal(t, 4, countPipelines(t, ro), "after the writer closed")
}

// A backup in rollback-journal mode (VACUUM INTO writes one) stays in
// that mode: opening it for writing would switch it to WAL, changing its
// header.
func TestOpenReadOnlyRollbackJournalBackup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := filepath.Join(dir, "live.db")
	backup := filepath.Join(t.TempDir(), "backup.db")
	writer := open(t, src)
	require.NoError(t, writer.Migrate(t.Context()))
	insertPipelines(t, writer, 2)
	_, err := writer.DB().ExecContext(t.Context(), "VACUUM INTO ?", backup)
	require.NoError(t, err)
	header, err := os.ReadFile(backup)
	require.NoError(t, err)
	require.Equal(t, byte(1), header[19], "VACUUM INTO writes a rollback-journal database")
	before := testdb.DirFiles(t, filepath.Dir(backup))

	ro := openReadOnly(t, backup)
	requireLatest(t, ro)
	require.Equal(t, 2, countPipelines(t, ro))
	_, err = ro.Reader().EventDelete(t.Context(), &driver.EventDeleteParams{Before: time.Now(), Limit: 10})
	require.ErrorContains(t, err, "readonly database")
	require.NoError(t, ro.Close())
	require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(backup)))
}

// A copy of a live database, taken with its log and index (a filesystem
// snapshot, say), is read with what its log holds, and the log is not
// folded into the database file, as the last writer closing it would do.
func TestOpenReadOnlyCopyWithLog(t *testing.T) {
	t.Parallel()
	src := testdb.SQLitePath(t)
	writer := open(t, src)
	require.NoError(t, writer.Migrate(t.Context()))
	insertPipelines(t, writer, 3)
	info, err := os.Stat(src + "-wal")
	require.NoError(t, err)
	require.NotZero(t, info.Size(), "the live database has commits in its log")

	dir := t.TempDir()
	copyPath := filepath.Join(dir, "copy.db")
	for _, suffix := range []string{"", "-wal", "-shm"} {
		data, err := os.ReadFile(src + suffix)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(copyPath+suffix, data, 0o644))
	}
	before := testdb.DirFiles(t, dir)

	ro := openReadOnly(t, copyPath)
	requireLatest(t, ro)
	require.Equal(t, 3, countPipelines(t, ro))
	require.NoError(t, ro.Close())
	require.Equal(t, before, testdb.DirFiles(t, dir))
}

// While a writer has the database open, readers go through its log: the
// conformance suite checks what they see; here, that they add no file.
func TestOpenReadOnlyLiveDatabase(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	writer := open(t, path)
	require.NoError(t, writer.Migrate(t.Context()))
	insertPipelines(t, writer, 1)
	names := func() []string {
		entries, err := os.ReadDir(filepath.Dir(path))
		require.NoError(t, err)
		var out []string
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}
	before := names()
	require.Equal(t, []string{"cloacina.db", "cloacina.db-shm", "cloacina.db-wal"}, before)

	ro := openReadOnly(t, path)
	require.Equal(t, 1, countPipelines(t, ro))
	insertPipelines(t, writer, 1)
	require.Equal(t, 2, countPipelines(t, ro))
	require.NoError(t, ro.Close())
	require.Equal(t, before, names())
}

func TestOpenReadOnlyRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.db")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	text := filepath.Join(dir, "notes.txt")
	require.NoError(t, os.WriteFile(text, []byte("not a database, but long enough to have a header's worth of bytes in it, which it does now."), 0o644))
	short := filepath.Join(dir, "short.db")
	require.NoError(t, os.WriteFile(short, []byte("SQLite"), 0o644))

	// A copy that kept the log but left the index behind.
	src := testdb.SQLitePath(t)
	writer := open(t, src)
	require.NoError(t, writer.Migrate(t.Context()))
	noIndex := filepath.Join(dir, "noindex.db")
	for _, suffix := range []string{"", "-wal"} {
		data, err := os.ReadFile(src + suffix)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(noIndex+suffix, data, 0o644))
	}
	hot := testdb.SQLiteHotJournal(t)
	before, hotBefore := testdb.DirFiles(t, dir), testdb.DirFiles(t, filepath.Dir(hot))

	for _, tc := range []struct{ path, want string }{
		{"", "empty database path"},
		{filepath.Join(dir, "missing.db"), "no database at " + filepath.Join(dir, "missing.db") + ": check the path (a read-only open never creates the file)"},
		{dir, "is a directory: give the path of a database file"},
		{empty, "database " + empty + " is an empty file: migrate it before reading it (a read-only open never writes)"},
		{text, text + " is not a SQLite database: check the path"},
		{short, short + " is not a SQLite database"},
		{noIndex, "has a write-ahead log (" + noIndex + "-wal) but no " + noIndex + "-shm, and SQLite can read the log only by creating that file: " +
			"copy the -shm file along with the other two, or checkpoint the database by opening it for writing once"},
		{hot, "database " + hot + " needs recovery from an interrupted write (attempt to write a readonly database (776)), " +
			"which only a connection that may write it can do: open it once for writing, as a user who may write the file and its directory"},
	} {
		_, err := sqlite.OpenReadOnly(tc.path)
		require.ErrorContains(t, err, tc.want, tc.path)
	}
	require.Equal(t, before, testdb.DirFiles(t, dir), "a refused open created or changed a file")
	require.Equal(t, hotBefore, testdb.DirFiles(t, filepath.Dir(hot)), "a refused open rolled back the journal")
}

// A read-only driver refuses writes of any statement, not only those it
// makes: every connection of both its pools has query_only on.
func TestOpenReadOnlyRefusesRawWrites(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	writer := open(t, path) // so that neither pool needs to create a file
	require.NoError(t, writer.Migrate(t.Context()))
	insertPipelines(t, writer, 1)
	// The immutable pool reads the database file alone.
	_, err := writer.DB().ExecContext(t.Context(), "PRAGMA wal_checkpoint(TRUNCATE)")
	require.NoError(t, err)
	ro := openReadOnly(t, path)
	for i, db := range sqlite.ReadOnlyPools(ro) {
		var on int
		require.NoError(t, db.QueryRowContext(context.Background(), "PRAGMA query_only").Scan(&on))
		require.Equal(t, 1, on, "pool %d", i)
		_, err := db.ExecContext(context.Background(), "DELETE FROM pipeline_executions")
		require.ErrorContains(t, err, "readonly database", "pool %d", i)
	}
	require.Equal(t, 1, countPipelines(t, writer))
}
