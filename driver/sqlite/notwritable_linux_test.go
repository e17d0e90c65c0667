package sqlite_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// A database this process may not write (no write permission on the
// file or its directory, or a read-only file system) fails Open with an
// error that says so and names the read-only open, which can read it;
// SQLite alone says "unable to open database file" on a read-only file
// system.
func TestOpenNotWritable(t *testing.T) {
	t.Parallel()
	// A migrated database in WAL mode, closed: its -wal and -shm are gone.
	migrated := func(t *testing.T, path string) {
		t.Helper()
		drv, err := sqlite.Open(path)
		require.NoError(t, err)
		require.NoError(t, drv.Migrate(t.Context()))
		require.NoError(t, drv.Close())
	}
	refused := func(t *testing.T, path string) {
		t.Helper()
		_, err := sqlite.Open(path)
		require.Error(t, err)
		require.ErrorContains(t, err, path)
		require.ErrorContains(t, err, "cannot write")
		require.ErrorContains(t, err, "OpenReadOnly")
		drv := openReadOnly(t, path)
		_, _, err = drv.MigrationVersion(t.Context())
		require.NoError(t, err, "the read-only open the error names reads it")
	}

	t.Run("permissions", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() == 0 {
			t.Skip("root may write any file")
		}
		path := testdb.SQLitePath(t)
		migrated(t, path)
		require.NoError(t, os.Chmod(path, 0o444))
		refused(t, path)
		require.NoError(t, os.Chmod(path, 0o644))
		dir := filepath.Dir(path)
		require.NoError(t, os.Chmod(dir, 0o555))
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		refused(t, path)
	})

	t.Run("read-only file system", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
			t.Skipf("cannot mount a file system here: %v", err)
		}
		t.Cleanup(func() { require.NoError(t, syscall.Unmount(dir, 0)) })
		path := filepath.Join(dir, "cloacina.db")
		migrated(t, path)
		require.NoError(t, syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""))
		refused(t, path)
	})
}
