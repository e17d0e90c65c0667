package cli

import (
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// The tests run as root, whom file permissions do not stop, so they prove
// that read commands write nothing by what they leave behind: the bytes
// of the database and of its log, and no file that was not there before.

// readCommands are the commands that only read, with run a run id in the
// database.
func readCommands(run string) [][]string {
	return [][]string{
		{"runs", "list"},
		{"runs", "get", run},
		{"runs", "get", run, "--json"},
		{"status"},
		{"schedules", "list"},
		{"events", "list"},
		{"events", "list", "--run", run},
		{"events", "cleanup", "--older-than", "1d", "--dry-run"},
		{"runs", "cleanup", "--older-than", "1d", "--dry-run"},
	}
}

// copyFiles copies path and those of its -wal and -shm files named by
// suffixes into dir, as a backup would, and returns the copy's path.
func copyFiles(t *testing.T, path, dir string, suffixes ...string) string {
	t.Helper()
	dst := filepath.Join(dir, "copy.db")
	for _, suffix := range append([]string{""}, suffixes...) {
		data, err := os.ReadFile(path + suffix)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst+suffix, data, 0o644))
	}
	return dst
}

// requireReadsLeaveAlone runs every read command on the SQLite file at
// path and requires each to succeed, to show the run, and to leave every
// file beside the database as it was.
func requireReadsLeaveAlone(t *testing.T, path, run string) {
	t.Helper()
	dir := filepath.Dir(path)
	before := testdb.DirFiles(t, dir)
	for _, args := range readCommands(run) {
		out := ok(t, "sqlite://"+path, args...)
		if !slices.Contains(args, "--dry-run") && args[0] != "status" && args[0] != "schedules" {
			require.Contains(t, out, run, args)
		}
		require.Equal(t, before, testdb.DirFiles(t, dir), "cloacina %s changed the files", strings.Join(args, " "))
	}
}

// onlyRun returns the id of the one run in the SQLite database at path,
// and closes the database again.
func onlyRun(t *testing.T, path string) string {
	t.Helper()
	r, err := cloacina.Open(t.Context(), "sqlite://"+path, nil)
	require.NoError(t, err)
	defer func() { require.NoError(t, r.Close()) }()
	runs, err := r.List(t.Context(), nil)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	return runs[0].ID.String()
}

func TestReadCommandsWriteNothing(t *testing.T) {
	t.Parallel()

	// After a clean shutdown a WAL database is one file: reading it must
	// not leave a -wal or -shm beside it.
	t.Run("closed database", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		ok(t, "sqlite://"+path, "run", "demo")
		run := onlyRun(t, path)
		require.NoFileExists(t, path+"-wal")
		requireReadsLeaveAlone(t, path, run)
	})

	// VACUUM INTO writes a backup in rollback-journal mode; opening it
	// for writing switches it to WAL, rewriting its header.
	t.Run("rollback-journal backup", func(t *testing.T) {
		t.Parallel()
		src := testdb.SQLitePath(t)
		ok(t, "sqlite://"+src, "run", "demo")
		run := onlyRun(t, src)
		backup := filepath.Join(t.TempDir(), "backup.db")
		db, err := sql.Open("sqlite", src)
		require.NoError(t, err)
		_, err = db.Exec("VACUUM INTO ?", backup)
		require.NoError(t, err)
		require.NoError(t, db.Close())
		header, err := os.ReadFile(backup)
		require.NoError(t, err)
		require.Equal(t, byte(1), header[19], "a rollback-journal database")
		requireReadsLeaveAlone(t, backup, run)
	})

	// A copy of a live database with its log and index (a filesystem
	// snapshot, say): opened for writing, the log is folded into the
	// database file and both log files are deleted when the last
	// connection closes.
	t.Run("copy with its log", func(t *testing.T) {
		t.Parallel()
		src := testdb.SQLitePath(t)
		exec, err := openRunner(t, "sqlite://"+src, heldWorkflow()).ExecuteAsync(t.Context(), "held", nil)
		require.NoError(t, err)
		info, err := os.Stat(src + "-wal")
		require.NoError(t, err)
		require.NotZero(t, info.Size(), "the run is in the live database's log")
		requireReadsLeaveAlone(t, copyFiles(t, src, t.TempDir(), "-wal", "-shm"), exec.ID().String())
	})

	// A database a live runner is writing: read commands see what it
	// commits and add no file.
	t.Run("live database", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		r := openRunner(t, "sqlite://"+path, heldWorkflow())
		first, err := r.ExecuteAsync(t.Context(), "held", nil)
		require.NoError(t, err)
		requireReadsLeaveAlone(t, path, first.ID().String())
		second, err := r.ExecuteAsync(t.Context(), "held", nil)
		require.NoError(t, err)
		require.Contains(t, ok(t, "sqlite://"+path, "runs", "get", second.ID().String()), "status     pending\n")
	})
}

// What a read command cannot read without writing is an error that says
// what to do, and the files stay as they were.
func TestReadCommandsRefuse(t *testing.T) {
	t.Parallel()
	t.Run("log without its index", func(t *testing.T) {
		t.Parallel()
		src := testdb.SQLitePath(t)
		exec, err := openRunner(t, "sqlite://"+src, heldWorkflow()).ExecuteAsync(t.Context(), "held", nil)
		require.NoError(t, err)
		path := copyFiles(t, src, t.TempDir(), "-wal")
		before := testdb.DirFiles(t, filepath.Dir(path))
		requireOneLineError(t, cli(t, "--database-url", "sqlite://"+path, "runs", "list"), ExitFailure,
			"database "+path+" has a write-ahead log ("+path+"-wal) but no "+path+"-shm, and SQLite can read the log only by creating that file: "+
				"copy the -shm file along with the other two, or checkpoint the database by opening it for writing once")
		require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)))
		// A command that writes may create the index, and does.
		ok(t, "sqlite://"+path, "runs", "cancel", exec.ID().String())
		require.Contains(t, ok(t, "sqlite://"+path, "runs", "get", exec.ID().String()), "status     cancelled\n")
	})
	t.Run("interrupted write", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLiteHotJournal(t)
		before := testdb.DirFiles(t, filepath.Dir(path))
		requireOneLineError(t, cli(t, "--database-url", "sqlite://"+path, "runs", "list"), ExitFailure,
			"database "+path+" needs recovery from an interrupted write (attempt to write a readonly database (776)), "+
				"which only a connection that may write it can do: open it once for writing, as a user who may write the file and its directory")
		require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)))
	})
	t.Run("not a database", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "notes.txt")
		require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("not a database\n", 10)), 0o644))
		requireOneLineError(t, cli(t, "--database-url", "sqlite://"+path, "events", "list"), ExitFailure,
			path+" is not a SQLite database: check the path")
	})
	t.Run("schema too new", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		ok(t, "sqlite://"+path, "migrate")
		db, err := sql.Open("sqlite", path)
		require.NoError(t, err)
		_, err = db.Exec("INSERT INTO cloacina_migrations (version, name, applied_at) VALUES (?, 'from_the_future', 'x')", latestSchemaVersion(t)+1)
		require.NoError(t, err)
		require.NoError(t, db.Close())
		before := testdb.DirFiles(t, filepath.Dir(path))
		for _, args := range readCommands("01a2143a-9b16-7c6a-8bc8-03346e25dd9f") {
			requireOneLineError(t, cli(t, append([]string{"--database-url", "sqlite://" + path}, args...)...), ExitFailure,
				"database "+path+" was migrated by a newer version of cloacina: upgrade this cloacina binary")
		}
		require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)))
	})
}

// On PostgreSQL a role that may only read the tables can run the read
// commands (their sessions are read-only); the commands that write still
// need a role that may write.
func TestReadCommandsWithASelectOnlyRole(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	admin := testdb.WithSchema(testdb.PostgresURL(), schema)
	exec, err := openRunner(t, admin, heldWorkflow()).ExecuteAsync(ctx, "held", nil)
	require.NoError(t, err)
	run := exec.ID().String()

	_, reader := testdb.SelectOnlyRoleURL(t, admin, schema)

	for _, args := range readCommands(run) {
		ok(t, reader, args...)
	}
	require.Contains(t, ok(t, reader, "runs", "get", run), "status     pending\n")
	requireOneLineError(t, cli(t, "--database-url", reader, "runs", "cancel", run), ExitFailure,
		"may not read and write table(s)")
	got, err := openRunner(t, admin).Get(ctx, exec.ID())
	require.NoError(t, err)
	require.Equal(t, cloacina.PipelinePending, got.Status)
}
